"""``vlp data``: dataset tools. ``vlp data synth`` writes the ShapesWorld built-in dataset.

Each data subcommand is an ``_add_<name>(data_subparsers)`` function listed in
``_SUBCOMMANDS``; adding one (e.g. ``inspect``) touches nothing else here.
"""

from __future__ import annotations

import argparse


def _fraction_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated fractions like 0.8,0.1,0.1, got {text!r}") from err


def _run_synth(args: argparse.Namespace) -> int:
    from vlp.data.shapesworld import FORMATS, generate

    formats = FORMATS if args.formats == "all" else tuple(f.strip() for f in args.formats.split(",") if f.strip())
    result = generate(
        args.out,
        images=args.images,
        size=args.size,
        seed=args.seed,
        splits=args.splits,
        holdout=args.holdout,
        holdout_pairs=args.holdout_pairs,
        min_objects=args.min_objects,
        max_objects=args.max_objects,
        captions_per_image=args.captions,
        questions_per_image=args.questions,
        answer_noise=args.answer_noise,
        shard_size=args.shard_size,
        workers=args.workers,
        formats=formats,
        overwrite=args.overwrite,
    )
    if not args.quiet:
        counts = ", ".join(f"{split} {n}" for split, n in result["counts"].items())
        held = ", ".join(f"{color} {shape}" for shape, color in result["holdout_combinations"]) or "none"
        t = result["timings"]
        print(f"wrote ShapesWorld to {result['out_dir']}: {counts}")
        print(f"held-out combinations: {held}")
        print(
            f"{t['total_s']:.1f} s ({t['render_s']:.1f} s render, {t['write_s']:.1f} s annotations) "
            f"with {result['workers']} worker(s): {result['images_per_s']:.0f} images/s"
        )
    return 0


def _add_synth(data_subparsers: argparse._SubParsersAction) -> None:
    p = data_subparsers.add_parser(
        "synth",
        help="render the ShapesWorld dataset in the real formats (COCO, Karpathy, VQAv2, RefCOCO, WebDataset, ...)",
        description="Render ShapesWorld scenes and write captions, VQA, referring expressions, boxes, region "
        "features, WebDataset shards and manifests in the real datasets' formats. Deterministic for a seed.",
    )
    p.add_argument("--out", required=True, help="output folder (must be empty or absent, unless --overwrite)")
    p.add_argument("--images", type=int, default=1000, help="number of images (default 1000)")
    p.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--splits", type=_fraction_list, default=(0.8, 0.1, 0.1), help="train,val,test fractions")
    p.add_argument("--holdout", type=float, default=0.1, help="fraction of images in the hold-out split (0.1)")
    p.add_argument(
        "--holdout-pairs", type=float, default=0.12, help="fraction of (shape, colour) pairs held out of train (0.12)"
    )
    p.add_argument("--min-objects", type=int, default=1, help="fewest objects per image (1)")
    p.add_argument("--max-objects", type=int, default=4, help="most objects per image (4)")
    p.add_argument("--captions", type=int, default=5, help="captions per image (5)")
    p.add_argument("--questions", type=int, default=5, help="VQA questions per image (5)")
    p.add_argument("--answer-noise", type=float, default=0.0, help="chance each of the 10 VQA answers is wrong (0)")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per WebDataset shard (1000)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: the CPUs, 1 for small jobs)")
    p.add_argument("--formats", default="all", help="comma-separated subset of the formats, or 'all'")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier ShapesWorld folder at --out")
    p.add_argument("--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(run=_run_synth)


_SUBCOMMANDS = (_add_synth,)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="dataset tools: synthesize ShapesWorld, ...")
    data_subparsers = parser.add_subparsers(dest="data_command", metavar="DATA_COMMAND")

    def show_help(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(run=show_help)
    for add in _SUBCOMMANDS:
        add(data_subparsers)
