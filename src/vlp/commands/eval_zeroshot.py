"""``vlp eval zeroshot``: zero-shot classification with prompt templates (top-1 / top-5)."""

from __future__ import annotations

import argparse

from vlp.commands.eval_common import (
    add_eval_arguments,
    add_label_arguments,
    finish_eval,
    prepare_eval,
)
from vlp.tasks.zeroshot import evaluate


def run(args: argparse.Namespace) -> int:

    setup = prepare_eval(args, "instances")
    task = setup.loaded.task
    by = args.by or task.get("by", "shape")
    templates = args.templates or task.get("templates") or "photo"
    objects = args.objects or task.get("objects", "largest")
    names = [n.strip() for n in args.class_names.split(",")] if args.class_names else None
    if names is None and task.get("by", "shape") == by:
        names = task.get("class_names") or None
    metrics = evaluate(
        setup.loaded.model, setup.loaded.tokenizer, setup.data, split=args.split, by=by, templates=templates,
        objects=objects, class_names=names, batch_size=args.batch_size, num_workers=args.workers,
    )  # fmt: skip
    chance = metrics.pop("chance")
    settings = {"by": by, "objects": objects, "templates": metrics["templates"], "class_names": metrics["class_names"]}
    table = {k: metrics[k] for k in ("top1", "top5", "mean_class_accuracy", "n_images", "n_classes")}
    return finish_eval(args, "zeroshot", metrics, setup, chance, settings, table_metrics=table)


def register(subparsers: argparse._SubParsersAction) -> None:
    """``vlp eval zeroshot`` here and ``vlp eval probe`` (linear probe and few-shot, :mod:`vlp.tasks.probe`)."""
    parser = subparsers.add_parser(
        "zeroshot", help="zero-shot classification with prompt templates: top-1/top-5 accuracy",
        description="CLIP-style zero-shot classification of COCO-instances images (ShapesWorld: shapes, colours or "
        "colour-shape pairs) with template-ensembled class prompts.",
    )  # fmt: skip
    add_eval_arguments(parser)
    add_label_arguments(parser)
    parser.add_argument("--templates", default=None, help="a template set (photo, clip7, shapes; default: the "
                        "fine-tuning task's, else shapes) or ';'-separated templates with {}")  # fmt: skip
    parser.add_argument("--class-names", default=None, help="comma-separated class names (default: from the data)")
    parser.set_defaults(run=run)
