"""``vlp eval refexp``: referring-expression comprehension, accuracy at IoU 0.5."""

from __future__ import annotations

import argparse

from vlp.commands.eval_common import add_eval_arguments, finish_eval, prepare_eval, save_predictions
from vlp.tasks.refexp import MODES, eval_data_for, evaluate


def run(args: argparse.Namespace) -> int:
    setup = prepare_eval(args, "refcoco")
    model = setup.loaded.model
    mode = args.mode if args.mode != "auto" else setup.loaded.task.get("mode", "auto")
    data = eval_data_for(model, setup.data)
    metrics = evaluate(
        model, setup.loaded.tokenizer, data, split=args.split, mode=mode, batch_size=args.batch_size,
        device=setup.device, num_workers=args.workers, keep_predictions=True,
    )  # fmt: skip
    save_predictions(args, "predictions.json", metrics.pop("predictions"))
    chance = metrics.pop("chance")
    table = {k: metrics[k] for k in ("accuracy", "miou", "n_expressions")}
    return finish_eval(args, "refexp", metrics, setup, chance, {"mode": metrics["mode"]}, table_metrics=table)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "refexp", help="referring expressions: accuracy at IoU >= 0.5, mean IoU",
        description="Referring-expression comprehension on RefCOCO-format data (ShapesWorld: --format shapesworld): "
        "region models pick a region, patch/grid models pick a candidate box or regress one; accuracy at IoU >= 0.5 "
        "and mean IoU.",
    )  # fmt: skip
    add_eval_arguments(parser)
    parser.add_argument("--mode", choices=MODES, default="auto",
                        help="regions (region_score head), box (box head) or proposals (proposal_score head); "
                        "default: as fine-tuned")  # fmt: skip
    parser.set_defaults(run=run)
