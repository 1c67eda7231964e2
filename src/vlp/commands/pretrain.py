"""``vlp pretrain RECIPE``: pretrain a model from a recipe (see vlp.train)."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vlp.commands.run_args import overrides_of, run_options
    from vlp.recipe import parse_recipe, recipe_dict
    from vlp.train.jobs import build_pretraining_job, load_tokenizer_for
    from vlp.train.launch import run_job, with_data_folder

    data = with_data_folder(recipe_dict(args.recipe), args.data, "captions")
    recipe = parse_recipe(data, overrides_of(args), where=Path(str(args.recipe)).stem)
    tokenizer = load_tokenizer_for(recipe, args.tokenizer)
    if args.tokenizer:  # the run's recipe.yaml names it, so `vlp eval` / `vlp finetune` find it
        recipe.model.tokenizer = str(Path(args.tokenizer).resolve())

    def build(rank: int, world_size: int):
        return build_pretraining_job(recipe, rank=rank, world_size=world_size, tokenizer=tokenizer)

    name = Path(str(args.recipe)).stem
    return run_job(build, device=recipe.train.device, seed=recipe.train.seed, **run_options(args, name))


def register(subparsers: argparse._SubParsersAction) -> None:
    from vlp.commands.run_args import MULTI_NODE_HELP, add_run_arguments

    parser = subparsers.add_parser(
        "pretrain",
        help="pretrain a model from a recipe (single process or torchrun)",
        description="Pretrain the model a recipe describes on its data with its weighted objectives. "
        "Checkpoints go to RUN/checkpoints, metrics to RUN/metrics.jsonl; Ctrl-C or SIGTERM saves and stops.",
        epilog=MULTI_NODE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("recipe", help="built-in recipe name (see `vlp info`) or a recipe YAML file")
    add_run_arguments(parser)
    parser.set_defaults(run=run)
