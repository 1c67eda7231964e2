"""``vlp eval captioning``: caption metrics (CIDEr-D, BLEU-4, METEOR, ROUGE-L, SPICE) of generated captions."""

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
from vlp.tasks.captioning import evaluate
from vlp.tasks.decoding import DecodeOptions


def run(args: argparse.Namespace) -> int:
    setup = prepare_eval(args, "captions")
    prompt = args.prompt if args.prompt is not None else setup.loaded.task.get("prompt", "a picture of ")
    options = decode_options(args)
    metrics = evaluate(
        setup.loaded.model, setup.loaded.tokenizer, setup.data, split=args.split, prompt=prompt, options=options,
        backend=args.backend, meteor=not args.no_meteor, batch_size=args.batch_size, device=setup.device,
        num_workers=args.workers, keep_predictions=True,
    )  # fmt: skip
    predictions = metrics.pop("predictions")
    save_predictions(args, "captions.json", predictions)
    settings = {"prompt": prompt, "backend": metrics["backend"], **vars(options)}
    return finish_eval(args, "captioning", metrics, setup, settings=settings)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "captioning", help="image captioning: BLEU-1..4, METEOR, ROUGE-L, CIDEr",
        description="Caption every image with the image-grounded decoder and score against the references "
        "(COCO caption evaluation via pycocoevalcap + Java when available, else the built-in metrics).",
    )  # fmt: skip
    add_eval_arguments(parser)
    add_decode_arguments(parser, DecodeOptions())
    parser.add_argument("--prompt", default=None, help="decoder prompt (default: the fine-tuning task's)")
    parser.add_argument("--backend", choices=("auto", "builtin", "pycocoevalcap"), default="auto",
                        help="caption metric implementation (default: auto)")  # fmt: skip
    parser.add_argument("--no-meteor", action="store_true", help="skip METEOR (pycocoevalcap backend)")
    parser.set_defaults(run=run)
