"""``vlp demo --out DIR [--quick]``: the whole toolkit end to end on ShapesWorld (see vlp.demo.pipeline)."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from vlp.config import parse_override
    from vlp.demo.config import DemoConfig
    from vlp.demo.pipeline import run_demo

    config = DemoConfig.quick() if args.quick else DemoConfig()
    changes = {k: v for k, v in (("images", args.images), ("seed", args.seed), ("tag_steps", args.tag_steps),
                                 ("pretrain_steps", args.pretrain_steps), ("threads", args.threads),
                                 ("generation_steps", args.generation_steps),
                                 ("generation_seconds", args.generation_seconds))
               if v is not None}  # fmt: skip
    if args.overrides:
        changes["recipe_overrides"] = {**config.recipe_overrides, **dict(map(parse_override, args.overrides))}
    if changes:
        config = config.replace(**changes)
    run_demo(args.out, quick=args.quick, config=config, generator=args.generator)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="generate data, pretrain, fine-tune and evaluate every task; write a report",
        description="Generate ShapesWorld, train a tokenizer, train the image tower to tag objects, pretrain a tiny "
        "ALBEF-style model from it (ITC + ITM + MLM, shape word-swap negatives), "
        "evaluate retrieval, zero-shot classification and heat maps, fine-tune VQA, referring expressions and "
        "captioning, print one results table with chance levels and write OUT/report.md with pictures. "
        "A few minutes on 2 CPU cores; --quick runs every step in seconds (scores near chance).",
    )
    parser.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and a few steps: a smoke test")
    parser.add_argument("--images", type=int, default=None, help="ShapesWorld images to generate")
    parser.add_argument("--seed", type=int, default=None, help="seed of the data and of every training run (default 0)")
    parser.add_argument(
        "--tag-steps",
        type=int,
        default=None,
        help="steps of the image tower's tagging stage before pretraining (default 800; 0 = none)",
    )
    parser.add_argument("--pretrain-steps", type=int, default=None, help="pretraining optimizer steps")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the pretraining recipe (albef-demo.yaml), e.g. "
                        "--set objectives.itm.swap_words=[]; repeatable")  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: 1, fastest here)")
    parser.add_argument(
        "--generator",
        default=None,
        help="a trained text-to-image model folder to sample from (instead of training one)",
    )
    parser.add_argument("--generation-steps", type=int, default=None,
                        help="optimizer steps of the small text-to-image model the demo trains for its report in a "
                        "second process, beside the rest of the demo (default 750; 0 = none)")  # fmt: skip
    parser.add_argument("--generation-seconds", type=float, default=None,
                        help="train that model for this many CPU seconds instead of a number of steps "
                        "(0 = none)")  # fmt: skip
    parser.set_defaults(run=run)
