"""``vlp generate``: text-to-image sampling; ``vlp train-generation``: train a text-to-image model or ControlNet.

vlp train-generation t2i-shapes --out runs/t2i [--steps 100] [--resume]
vlp train-generation t2i-shapes --data COCO_FOLDER --tokenizer TOK --out runs/t2i-coco
vlp generate "a red circle" "a blue square" --model runs/t2i/model --image grid.png --samples 4 --seed 0
vlp train-generation t2i-shapes-control --base runs/t2i/model --out runs/t2i-control
vlp generate "a red circle" --model runs/t2i-control/model --control layout.png --image x.png
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
    if args.samples < 1 or args.sampling_steps < 1 or args.scale < 1:
        print("vlp generate: --samples, --sampling-steps and --scale must be >= 1", file=sys.stderr)
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
        steps=args.sampling_steps,
        guidance=args.guidance,
        eta=args.eta,
        progress=True,
    )
    path = save_grid(to_uint8(images), rows=len(args.prompt), path=args.image, scale=args.scale)
    print(f"wrote {path} ({len(args.prompt)} prompts x {args.samples} samples)")
    return 0


def run_train(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from vlp.generation.train import load_generation_recipe, summary_table, train_generation
    from vlp.train.distributed import exit_process
    from vlp.train.launch import exit_code

    extra = [f"train.steps={args.steps}"] if args.steps is not None else []
    recipe = load_generation_recipe(args.recipe, [*args.overrides, *extra], data_folder=args.data)
    if args.base:
        recipe.base = args.base
    if args.tokenizer:
        recipe.tokenizer = str(Path(args.tokenizer).resolve())
    summary = train_generation(
        recipe, args.out, overwrite=args.overwrite, progress=not args.no_progress, resume=args.resume,
        log=lambda line: print(line, flush=True),
    )  # fmt: skip
    stopped = summary["stopped_by"]
    code = exit_code(None if stopped == "steps" else stopped)  # 130 / 143 after Ctrl-C / SIGTERM
    if os.environ.get("RANK", "0") == "0":  # torchrun's rank; every rank has the summary
        print(summary_table(summary))
        print(f"{'summary':<12} {Path(args.out) / 'summary.json'}")
    if summary["ranks"] > 1:
        exit_process(code)  # as vlp pretrain: a finished gloo rank must not wait on its peers' teardown
    return code


def register(subparsers: argparse._SubParsersAction) -> None:
    gen = subparsers.add_parser(
        "generate",
        help="generate images from text prompts with a text-to-image model",
        description="Sample images for each prompt with DDIM and classifier-free guidance; writes one PNG grid "
        "(rows = prompts, columns = samples).",
    )
    gen.add_argument("prompt", nargs="+", help="one or more prompts (one grid row each)")
    gen.add_argument("--model", required=True, help="text-to-image model folder (RUN/model of vlp train-generation)")
    gen.add_argument("--image", required=True, metavar="FILE", help="PNG file to write the grid to")
    gen.add_argument("--samples", type=int, default=4, help="images per prompt")
    gen.add_argument("--seed", type=int, default=0, help="seed of the initial noise")
    gen.add_argument("--sampling-steps", type=int, default=50, help="DDIM sampling steps")
    gen.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale (1 = none)")
    gen.add_argument("--eta", type=float, default=0.0, help="DDIM eta: 0 deterministic, 1 DDPM-like")
    gen.add_argument("--control", default=None, help="control map image (layout or edge map) for a ControlNet model")
    gen.add_argument("--scale", type=int, default=4, help="enlarge each pixel this many times in the grid")
    gen.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    gen.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's own choice)")
    gen.set_defaults(run=run_generate)

    train = subparsers.add_parser(
        "train-generation",
        help="train a text-to-image model (or, with --base, a ControlNet on a trained one) from a generation recipe",
        description="Train a pixel-space text-to-image diffusion model on rendered ShapesWorld scenes (recipe "
        "t2i-shapes) or on any caption folder vlp reads (--data), or a ControlNet branch on top of a trained one "
        "(t2i-shapes-control with --base), on vlp's training engine (checkpoints, exact --resume, Ctrl-C / SIGTERM "
        "save and stop, torchrun for DDP). The run ends after train.steps optimizer steps or, when the recipe sets "
        "train.time_budget_minutes, when that budget is spent, whichever comes first; the learning rate's cosine "
        "decay follows whichever ends first, so a budgeted run finishes its schedule on time on any machine. "
        "Writes OUT/model (EMA weights, recipe, tokenizer), OUT/metrics.jsonl, OUT/checkpoints (for --resume), "
        "OUT/samples.png and OUT/summary.json.",
    )
    train.add_argument("recipe", help="recipe name (t2i-shapes, t2i-shapes-control) or YAML path")
    train.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a recipe value, e.g. --set train.batch_size=16 (repeatable)",
    )  # fmt: skip
    train.add_argument("--out", required=True, help="run folder (the model goes to OUT/model)")
    train.add_argument(
        "--steps", type=int, default=None,
        help="optimizer steps at most (same as --set train.steps=N; default: the recipe's). A time budget in the "
        "recipe may end the run sooner",
    )  # fmt: skip
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    train.add_argument("--base", default=None, help="trained text-to-image folder to add a ControlNet to")
    train.add_argument(
        "--data", default=None, metavar="FOLDER", help="caption dataset folder to train on instead of rendered "
        "scenes (Karpathy, ALBEF/BLIP JSON, WebDataset shards, manifests); its format is recognised and said",
    )  # fmt: skip
    train.add_argument(
        "--tokenizer", default=None, help="tokenizer folder/file (default: the recipe's; rendered data trains one)"
    )
    train.add_argument("--overwrite", action="store_true", help="start the run in --out again, replacing its files")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(run=run_train)
