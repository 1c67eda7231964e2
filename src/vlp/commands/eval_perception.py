"""``vlp eval perception``: zero-shot localisation from patch-text similarity heat maps."""

from __future__ import annotations

import argparse
from pathlib import Path

from vlp.commands.eval_common import add_eval_arguments, finish_eval, prepare_eval, save_predictions
from vlp.tasks.common import build_eval_dataset
from vlp.tasks.perception import evaluate, heatmap, save_overlay


def run(args: argparse.Namespace) -> int:
    setup = prepare_eval(args, "instances")
    model, tokenizer = setup.loaded.model, setup.loaded.tokenizer
    metrics = evaluate(
        model, tokenizer, setup.data, split=args.split, templates=args.templates, threshold=args.threshold,
        k=args.threshold_k, batch_size=args.batch_size, num_workers=args.workers, keep_predictions=True,
    )  # fmt: skip
    predictions = metrics.pop("predictions")
    save_predictions(args, "predictions.json", predictions)
    if args.overlays and args.out:  # a few example overlays for a look at what the boxes come from
        dataset = build_eval_dataset(setup.data, args.split, tokenizer)
        by_id = {r.get("image_id"): r["image"] for r in dataset.index.records}
        for n, p in enumerate(predictions[: args.overlays]):
            heat = heatmap(model, tokenizer, by_id[p["image_id"]], p["query"], args.templates)
            save_overlay(by_id[p["image_id"]], heat, Path(args.out) / "overlays" / f"{n:03d}.png", p["box"])
    chance = metrics.pop("chance")
    settings = {"templates": args.templates, "threshold": args.threshold, "k": args.threshold_k}
    return finish_eval(args, "perception", metrics, setup, chance, settings)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "perception", help="zero-shot text-query heat maps -> boxes (MaskCLIP-style): IoU, pointing",
        description="Dense patch-text similarity of a CLIP-style patch model for queries like 'red circle' on "
        "COCO-instances images with colour attributes (ShapesWorld); box = largest component of the thresholded "
        "map; accuracy at IoU >= 0.5, mean IoU and pointing-game accuracy.",
    )  # fmt: skip
    add_eval_arguments(parser)
    parser.add_argument("--templates", default="photo", help="prompt template set or ';'-separated templates")
    parser.add_argument("--threshold", choices=("otsu", "std"), default="otsu", help="mask threshold (default: otsu)")
    parser.add_argument("--threshold-k", type=float, default=1.0, metavar="K",
                        help="with --threshold std: the mask is the map above mean + K x std (default: 1)")  # fmt: skip
    parser.add_argument("--overlays", type=int, default=0, help="save this many overlay PNGs under OUT/overlays")
    parser.set_defaults(run=run)
