"""``vlp eval tagging``: multi-label tagging of a COCO-instances split with the model's tagging head."""

from __future__ import annotations

import argparse

from vlp.commands.eval_common import add_eval_arguments, finish_eval, prepare_eval
from vlp.config import ConfigError
from vlp.tasks.tagging import evaluate, head_options


def run(args: argparse.Namespace) -> int:
    setup = prepare_eval(args, "instances")
    task = setup.loaded.task
    min_area = args.min_area if args.min_area is not None else float(task.get("min_area", 0.0))
    if not min_area >= 0:
        raise ConfigError(f"--min-area: expected a number of pixels >= 0, got {min_area}")
    if not 0.0 <= args.threshold <= 1.0:
        raise ConfigError(f"--threshold: expected a probability in [0, 1], got {args.threshold}")
    metrics = evaluate(
        setup.loaded.model, setup.loaded.tokenizer, setup.data, split=args.split, min_area=min_area,
        threshold=args.threshold, batch_size=args.batch_size, num_workers=args.workers,
    )  # fmt: skip
    chance = metrics.pop("chance")
    settings = {"min_area": min_area, "threshold": args.threshold, "pool": head_options(setup.loaded.model).pool,
                "class_names": metrics["class_names"]}  # fmt: skip
    table = {k: metrics[k] for k in ("map", "tag_acc", "exact_match", "n_images", "n_scored_classes")}
    return finish_eval(args, "tagging", metrics, setup, chance, settings, table_metrics=table)


def register(subparsers: argparse._SubParsersAction) -> None:
    """``vlp eval tagging``."""
    parser = subparsers.add_parser(
        "tagging", help="multi-label image tagging (which categories appear): mAP, per-label accuracy",
        description="Multi-label tagging of COCO-instances images (ShapesWorld: which shapes appear) with the "
        "model's tagging head on its pooled image tower: mAP, per-label accuracy and exact match.",
    )  # fmt: skip
    add_eval_arguments(parser)
    parser.add_argument("--min-area", type=float, default=None, help="ignore objects below this many pixels of "
                        "the model input (default: the fine-tuning task's, else 0)")  # fmt: skip
    parser.add_argument("--threshold", type=float, default=0.5, help="probability above which a tag is predicted")
    parser.set_defaults(run=run)
