"""``vlp eval generation``: text-to-image scores (attribute accuracy on ShapesWorld prompts, or CLIP-score
on a caption set)."""

from __future__ import annotations

import argparse
from typing import Any

from vlp.config import ConfigError
from vlp.generation.evaluate import evaluate_generation, evaluate_on_captions, format_results
from vlp.tasks.reporting import write_results


def run_eval(args: argparse.Namespace) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.data:
        if not args.dual_encoder:
            raise ConfigError("--data: scoring the captions of other data needs --dual-encoder (CLIP-score)")
        results = evaluate_on_captions(
            args.model, args.data, args.dual_encoder, split=args.split, count=args.prompts, steps=args.sampling_steps,
            guidance=args.guidance, eta=args.eta, seed=args.seed, grid=args.grid,
        )  # fmt: skip
    else:
        results = _shapes_results(args)
    print(format_results(results))
    if args.out:
        print(f"wrote {write_results(args.out, results)}")
    return 0


def _shapes_results(args: argparse.Namespace) -> dict[str, Any]:
    return evaluate_generation(
        args.model,
        samples=args.samples,
        steps=args.sampling_steps,
        guidance=args.guidance,
        eta=args.eta,
        seed=args.seed,
        classifier=args.classifier,
        dual_encoder=args.dual_encoder,
        control=False if args.no_control else None,
        grid=args.grid,
        progress=True,
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``generation`` to the ``vlp eval`` group."""
    parser = subparsers.add_parser(
        "generation",
        help="text-to-image: attribute accuracy, layout IoU (ControlNet) and CLIP-score vs chance and real images",
    )
    parser.add_argument("--model", required=True, help="text-to-image model folder (from vlp train-generation)")
    parser.add_argument("--samples", type=int, default=2, help="images per (shape, colour) prompt (42 prompts)")
    parser.add_argument("--sampling-steps", type=int, default=50, help="DDIM sampling steps")
    parser.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale")
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0 = deterministic)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial noise")
    parser.add_argument(
        "--classifier", default=None, help="folder of the attribute classifier; trained (and saved there) if absent"
    )
    parser.add_argument("--dual-encoder", default=None, help="vlp dual-encoder model folder for CLIP-score")
    parser.add_argument("--no-control", action="store_true", help="ignore the model's ControlNet branch")
    parser.add_argument(
        "--data", default=None, metavar="FOLDER", help="score the captions of a caption dataset instead of "
        "ShapesWorld's 42 attribute prompts (CLIP-score only: needs --dual-encoder)",
    )  # fmt: skip
    parser.add_argument("--split", default="val", help="split of --data whose captions are the prompts")
    parser.add_argument("--prompts", type=int, default=64, help="captions of --data to generate for")
    parser.add_argument("--grid", default=None, metavar="FILE",
                        help="PNG file to write the generated images to (rows = prompts)")  # fmt: skip
    parser.add_argument("--out", default=None, help="folder for results.json (default: print only)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.set_defaults(run=run_eval)
