"""``vlp generate``: text-to-image sampling; ``vlp train-generation``: train a text-to-image model or ControlNet.

vlp train-generation t2i-shapes --out runs/t2i [--set train.steps=100]
vlp generate "a red circle" "a blue square" --model runs/t2i/model --out grid.png --samples 4 --seed 0
vlp train-generation t2i-shapes-control --base runs/t2i/model --out runs/t2i-control
vlp generate "a red circle" --model runs/t2i-control/model --control layout.png --out x.png
"""

from __future__ import annotations

import argparse
import sys


def run_generate(args: argparse.Namespace) -> int:
    import torch

    from vlp.generation.data import to_uint8
    from vlp.generation.images import read_control_map, save_grid
    from vlp.generation.model import load_generator

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.samples < 1 or args.steps < 1 or args.scale < 1:
        print("vlp generate: --samples, --steps and --scale must be >= 1", file=sys.stderr)
        return 2
    try:
        model = load_generator(args.model, args.device)
        control = None
        if args.control:
            if model.control is None:
                print(f"vlp generate: --control given but {args.model} has no ControlNet branch", file=sys.stderr)
                return 2
            control = read_control_map(args.control, model.cfg.image_size).repeat(len(args.prompt), 1, 1, 1)
    except (FileNotFoundError, ValueError) as err:
        print(f"vlp generate: {err}", file=sys.stderr)
        return 2
    images = model.generate(
        args.prompt,
        samples=args.samples,
        seed=args.seed,
        control=control,
        steps=args.steps,
        guidance=args.guidance,
        eta=args.eta,
        progress=True,
    )
    path = save_grid(to_uint8(images), rows=len(args.prompt), path=args.out, scale=args.scale)
    print(f"wrote {path} ({len(args.prompt)} prompts x {args.samples} samples)")
    return 0


def run_train(args: argparse.Namespace) -> int:
    import json

    from vlp.generation.train import load_generation_recipe, train_generation

    recipe = load_generation_recipe(args.recipe, args.overrides)
    if args.base:
        recipe.base = args.base
    summary = train_generation(recipe, args.out, overwrite=args.overwrite, progress=not args.no_progress)
    print(json.dumps(summary, indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    gen = subparsers.add_parser("generate", help="generate images from text prompts with a text-to-image model")
    gen.add_argument("prompt", nargs="+", help="one or more prompts (one grid row each)")
    gen.add_argument("--model", required=True, help="text-to-image model folder (from vlp train-generation)")
    gen.add_argument("--out", required=True, help="PNG to write: rows = prompts, columns = samples")
    gen.add_argument("--samples", type=int, default=4, help="images per prompt")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--steps", type=int, default=50, help="DDIM steps")
    gen.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale (1 = none)")
    gen.add_argument("--eta", type=float, default=0.0, help="DDIM eta: 0 deterministic, 1 DDPM-like")
    gen.add_argument("--control", default=None, help="control map image (layout or edge map) for a ControlNet model")
    gen.add_argument("--scale", type=int, default=4, help="enlarge each pixel this many times in the grid")
    gen.add_argument("--device", default="cpu")
    gen.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    gen.set_defaults(run=run_generate)

    train = subparsers.add_parser(
        "train-generation",
        help="train a text-to-image model (or, with --base, a ControlNet on a trained one) from a generation recipe",
    )
    train.add_argument("recipe", help="recipe name (t2i-shapes, t2i-shapes-control) or YAML path")
    train.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a recipe value, e.g. --set train.steps=100 (repeatable)",
    )  # fmt: skip
    train.add_argument("--out", required=True, help="run folder (the model goes to OUT/model)")
    train.add_argument("--base", default=None, help="trained text-to-image folder to add a ControlNet to")
    train.add_argument("--overwrite", action="store_true", help="replace a non-empty run folder")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(run=run_train)
