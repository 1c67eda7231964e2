"""``vlp eval zeroshot``: zero-shot classification with prompt templates (top-1 / top-5)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vlp.commands.eval_common import (
    add_eval_arguments,
    add_int8_argument,
    add_label_arguments,
    apply_int8,
    class_names_option,
    finish_eval,
    prepare_labelled_eval,
)
from vlp.config import ConfigError
from vlp.data.sources.image_folder import folder_layout
from vlp.tasks.reporting import write_json
from vlp.tasks.zeroshot import TEMPLATE_SETS, evaluate, save_confusion_png


def run(args: argparse.Namespace) -> int:
    setup, folder = prepare_labelled_eval(args)
    int8 = apply_int8(args, setup)
    task = setup.loaded.task
    if args.split is None:  # one folder of class folders has no split: every image is classified
        args.split = "all" if folder and not folder_layout(setup.data.root or ".").splits else "test"
    by = args.by or task.get("by", "shape")
    templates = args.templates or task.get("templates") or "photo"
    objects = args.objects or task.get("objects", "largest")
    names, setup.data = class_names_option(args.class_names, setup.data)
    if names is None and not folder and not args.class_names and task.get("by", "shape") == by:
        names = task.get("class_names") or None
    metrics = evaluate(
        setup.loaded.model, setup.loaded.tokenizer, setup.data, split=args.split, by=by, templates=templates,
        objects=objects, class_names=names, batch_size=args.batch_size, num_workers=args.workers,
    )  # fmt: skip
    chance = metrics.pop("chance")
    matrix = metrics.pop("confusion_matrix")
    settings = {"templates": metrics["templates"], "class_names": metrics["class_names"]}
    settings.update(int8)
    if folder:
        settings["split_source"] = metrics.get("split_source")
        print(f"split {args.split}: {metrics.get('split_source')}")
    else:
        settings.update(by=by, objects=objects)
    table = {k: metrics[k] for k in ("top1", "top5", "mean_per_class_recall", "n_images", "n_classes")}
    code = finish_eval(args, "zeroshot", metrics, setup, chance, settings, table_metrics=table)
    if args.out:
        write_json(Path(args.out) / "confusion_matrix.json", {"class_names": metrics["class_names"],
                   "rows": "true class", "columns": "predicted class", "matrix": matrix})  # fmt: skip
        try:
            print(f"wrote {save_confusion_png(matrix, metrics['class_names'], Path(args.out) / 'confusion.png')}")
        except ConfigError as err:  # matplotlib is an extra: the numbers are written all the same
            print(f"note: no confusion.png ({err})")
    return code


def register(subparsers: argparse._SubParsersAction) -> None:
    """``vlp eval zeroshot`` (``vlp eval probe`` is :mod:`vlp.commands.eval_probe`)."""
    parser = subparsers.add_parser(
        "zeroshot", help="zero-shot classification with prompt templates: top-1/top-5 accuracy",
        description="CLIP-style zero-shot classification with template-ensembled class prompts, of an image folder "
        "with one sub-folder per class (ImageFolder / clip_benchmark layout, directly or under train/ val/ test/) "
        "or of COCO-instances images (ShapesWorld: shapes, colours or colour-shape pairs). Reports top-1, top-5 "
        "and mean per-class recall; --out also gets confusion_matrix.json and confusion.png.",
    )  # fmt: skip
    add_eval_arguments(parser, None, "split to evaluate (default: test; test/ or else val/ of an image folder with "
                       "split folders; every image of one folder of class folders)")  # fmt: skip
    add_label_arguments(parser)
    parser.add_argument("--templates", default=None, help="a template set (" + ", ".join(TEMPLATE_SETS) + "; "
                        "default: the fine-tuning task's, else photo) or ';'-separated templates with {}")  # fmt: skip
    parser.add_argument("--class-names", default=None, help="comma-separated class names, or a file: one name per "
                        "line (or a JSON list) in sorted-folder order, or a JSON mapping folder -> name (default: "
                        "the folder names / the data's categories)")  # fmt: skip
    add_int8_argument(parser)
    parser.set_defaults(run=run)
