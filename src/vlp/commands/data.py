"""``vlp data``: dataset tools. ``vlp data synth`` writes the ShapesWorld built-in dataset; ``vlp data
capfilt`` bootstraps a web caption set with a captioner and an ITM filter (BLIP's CapFilt).

Each data subcommand is an ``_add_<name>(data_subparsers)`` function listed in
``_SUBCOMMANDS``; adding one (e.g. ``inspect``) touches nothing else here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vlp.io.folders import load_any
from vlp.tasks.capfilt import CapFiltOptions, CapFiltStats, run_capfilt
from vlp.tasks.common import resolve_device


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


def _run_capfilt(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    captioner = load_any(args.captioner, device=device)
    filt = (
        captioner
        if Path(args.filter).resolve() == Path(args.captioner).resolve()
        else load_any(args.filter, device=device)
    )
    prompt = args.prompt if args.prompt is not None else captioner.task.get("prompt", "a picture of ")
    options = CapFiltOptions(
        threshold=args.threshold, top_p=args.top_p, samples_per_image=args.samples_per_image,
        max_new_tokens=args.max_new_tokens, min_new_tokens=args.min_new_tokens, prompt=prompt,
        batch_size=args.batch_size, seed=args.seed, split=args.split, format=args.format, shard_size=args.shard_size,
    )  # fmt: skip

    def report(stats: CapFiltStats) -> None:
        if not args.quiet:
            print(stats.line(), file=sys.stderr, flush=True)

    names = (str(Path(args.captioner).resolve()), str(Path(args.filter).resolve()))
    stats, files = run_capfilt(captioner, filt, args.data, args.out, options, names=names, resume=args.resume,
                               force=args.force, device=device, progress=report)  # fmt: skip
    if not args.quiet:
        print(stats.line().replace("capfilt:", "capfilt done:"))
        print("wrote " + ", ".join(str(f) for f in files))
    return 0


def _add_capfilt(data_subparsers: argparse._SubParsersAction) -> None:
    p = data_subparsers.add_parser(
        "capfilt",
        help="BLIP's CapFilt: synthetic captions from a captioner, web and synthetic texts filtered by ITM",
        description="For every image of a caption set, sample synthetic captions with a fine-tuned captioner "
        "(nucleus sampling), score the web and synthetic texts with a fine-tuned ITM filter, keep those with "
        "p(match) > --threshold and write the kept texts as a new caption set (ALBEF/BLIP JSON or WebDataset "
        "shards) plus decisions_SPLIT.json. Streams in batches; --resume continues a stopped run.",
    )
    p.add_argument("--captioner", required=True, help="a captioning model (run, model or converted folder)")
    p.add_argument("--filter", required=True, help="a model with a fusion encoder and an ITM head")
    p.add_argument("--data", required=True, help="the web caption set: a dataset folder vlp recognises")
    p.add_argument("--out", required=True, help="output folder (must be empty or absent, unless --resume/--force)")
    p.add_argument("--split", default="train", help="the split to bootstrap (train)")
    p.add_argument("--threshold", type=float, default=0.5, help="keep a text when ITM p(match) > this (0.5)")
    p.add_argument("--top-p", type=float, default=0.9, help="nucleus of the synthetic captions (BLIP: 0.9)")
    p.add_argument("--samples-per-image", type=int, default=1, help="synthetic captions per image (1)")
    p.add_argument("--max-new-tokens", type=int, default=20, help="longest synthetic caption, in tokens (20)")
    p.add_argument("--min-new-tokens", type=int, default=0, help="shortest synthetic caption, in tokens (0)")
    p.add_argument("--prompt", default=None, help="the captioner's prompt (default: its fine-tuning run's)")
    p.add_argument("--batch-size", type=int, default=16, help="images per batch (16)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (0)")
    p.add_argument("--format", choices=("albef-json", "wds"), default="albef-json", help="output format")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per output shard with --format wds")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue the run stopped in --out")
    again.add_argument("--force", action="store_true", help="start over in an existing --out")
    p.add_argument("--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(run=_run_capfilt)


_SUBCOMMANDS = (_add_synth, _add_capfilt)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="dataset tools: synthesize ShapesWorld, ...")
    data_subparsers = parser.add_subparsers(dest="data_command", metavar="DATA_COMMAND")

    def show_help(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(run=show_help)
    for add in _SUBCOMMANDS:
        add(data_subparsers)
