"""``vlp eval seq2seq``: the OFA-style encoder-decoder on captioning (CIDEr), VQA (accuracy) and referring
expressions (accuracy at IoU >= 0.5), all decoded as text."""

from __future__ import annotations

import argparse

from vlp.commands.eval_common import add_decode_arguments, add_eval_arguments, decode_options, finish_eval, prepare_eval
from vlp.tasks.decoding import DecodeOptions
from vlp.tasks.seq2seq import evaluate
from vlp.tasks.seq2seq.data import TASK_NAMES


def run(args: argparse.Namespace) -> int:
    setup = prepare_eval(args, "captions")
    options = decode_options(args)
    answers = [] if args.free_answers else None
    metrics = evaluate(
        setup.loaded.model, setup.loaded.tokenizer, setup.data, split=args.split, tasks=tuple(args.tasks),
        options=options, answers=answers, batch_size=args.batch_size, device=setup.device,
    )  # fmt: skip
    chance = {task: m.pop("chance") for task, m in metrics.items() if "chance" in m}
    settings = {"tasks": list(args.tasks), "answers": "free" if args.free_answers else "train answers", **vars(options)}
    return finish_eval(args, "seq2seq", metrics, setup, chance=chance, settings=settings)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "seq2seq", help="OFA-style model: captioning, VQA and referring expressions, all generated",
        description="Evaluate a model trained with task seq2seq (e.g. task recipe seq2seq-ofa-tiny) on each of its "
        "tasks: CIDEr / BLEU of its captions, official VQA accuracy of its answers (restricted to the training "
        "answers unless --free-answers), and accuracy at IoU >= 0.5 of the boxes it writes as location tokens.",
    )  # fmt: skip
    add_eval_arguments(parser)
    add_decode_arguments(parser, DecodeOptions(strategy="greedy"))
    parser.add_argument("--tasks", nargs="+", choices=TASK_NAMES, default=list(TASK_NAMES),
                        help="tasks to score (default: all three)")  # fmt: skip
    parser.add_argument("--free-answers", action="store_true", help="do not restrict answers to the training answers")
    parser.set_defaults(run=run)
