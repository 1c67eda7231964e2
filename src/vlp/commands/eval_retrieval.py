"""``vlp eval retrieval``: image-text retrieval recall (R@1/5/10, RSUM) on a caption split."""

from __future__ import annotations

import argparse

from vlp.commands.eval_common import add_eval_arguments, add_int8_argument, apply_int8, finish_eval, prepare_eval
from vlp.tasks.retrieval import evaluate


def run(args: argparse.Namespace) -> int:
    setup = prepare_eval(args, "captions")
    int8 = apply_int8(args, setup)
    mode = "exhaustive" if args.exhaustive else "dual" if args.dual else "auto"
    metrics = evaluate(
        setup.loaded.model, setup.loaded.tokenizer, setup.data, split=args.split, mode=mode, k=args.k,
        add_itc=args.add_itc, batch_size=args.batch_size, pair_batch_size=args.pair_batch_size,
        device=setup.device, num_workers=args.workers,
    )  # fmt: skip
    chance = metrics.pop("chance")
    settings = {"mode": metrics["mode"], "k": args.k if metrics["mode"] == "two_stage" else None,
                "add_itc": args.add_itc, "num_pairs": metrics["num_pairs"]}  # fmt: skip
    settings.update(int8)
    return finish_eval(args, "retrieval", metrics, setup, chance, settings)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "retrieval", help="image-text retrieval: R@1/5/10 both ways and RSUM",
        description="Image-text retrieval on the Karpathy protocol. Dual encoders score embeddings; fusion "
        "models with a dual side run ITC top-k + ITM re-ranking (--k); --exhaustive scores every pair with ITM.",
    )  # fmt: skip
    add_eval_arguments(parser)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--exhaustive", action="store_true", help="score every pair with the fusion encoder")
    group.add_argument("--dual", action="store_true", help="rank by the dual-encoder similarity only")
    parser.add_argument("--k", type=int, default=16, help="two-stage shortlist length per query (default: 16)")
    parser.add_argument("--add-itc", action="store_true", help="add the ITC similarity to the ITM score (BLIP)")
    parser.add_argument("--pair-batch-size", type=int, default=256, help="pairs per fusion pass (default: 256)")
    add_int8_argument(parser)
    parser.set_defaults(run=run)
