"""``vlp eval vqa``: VQA accuracy (the official soft score) by classification or generation."""

from __future__ import annotations

import argparse

from vlp.commands.eval_common import (
    add_decode_arguments,
    add_eval_arguments,
    decode_options,
    finish_eval,
    prepare_eval,
    save_predictions,
)
from vlp.tasks.vqa import default_decode_options, evaluate


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    setup = prepare_eval(args, "vqa")
    task = setup.loaded.task
    vocab = task.get("answer_vocab") or None
    if args.answer_vocab:
        data = json.loads(Path(args.answer_vocab).read_text(encoding="utf-8"))
        vocab = data.get("answers") if isinstance(data, dict) else data
    style = args.style or task.get("style", "prefix")
    options = decode_options(args)
    metrics = evaluate(
        setup.loaded.model, setup.loaded.tokenizer, setup.data, split=args.split, method=args.method,
        answer_vocab=vocab, style=style, options=options, batch_size=args.batch_size, device=setup.device,
        num_workers=args.workers, keep_predictions=True,
    )  # fmt: skip
    save_predictions(args, "predictions.json", metrics.pop("predictions"))
    chance = metrics.pop("chance")
    settings = {"method": metrics["method"], "style": style if metrics["method"] != "classify" else None}
    if metrics["method"] == "generate":
        settings.update(vars(options))
    table = {k: metrics[k] for k in ("overall", "per_answer_type", "n_questions")}
    return finish_eval(args, "vqa", metrics, setup, chance, settings, table_metrics=table)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "vqa", help="visual question answering: official VQA accuracy",
        description="VQA accuracy (the official metric, answer normalization included), overall and per answer "
        "type, by answer classification (vqa head) or generation with the image-grounded decoder.",
    )  # fmt: skip
    add_eval_arguments(parser)
    parser.add_argument("--method", choices=("auto", "classify", "generate", "rank"), default="auto",
                        help="classify (vqa head), generate (decoder), rank (decoder over the answers)")  # fmt: skip
    parser.add_argument("--style", choices=("prefix", "blip"), default=None,
                        help="generative conditioning (default: the fine-tuning task's)")  # fmt: skip
    parser.add_argument("--answer-vocab", default=None, help='JSON {"answers": [...]} (default: saved with the run)')
    add_decode_arguments(parser, default_decode_options())
    parser.set_defaults(run=run)
