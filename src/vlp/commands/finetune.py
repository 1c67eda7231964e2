"""``vlp finetune TASK_RECIPE``: fine-tune a pretrained model on a downstream task."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vlp.commands.run_args import overrides_of, run_options
    from vlp.config import apply_overrides, from_dict
    from vlp.recipe import recipe_dict
    from vlp.recipe.run import TrainConfig
    from vlp.tasks import task_spec
    from vlp.train.jobs import build_finetuning_job, load_tokenizer_for
    from vlp.train.launch import run_job, with_data_folder

    data = recipe_dict(args.task_recipe)
    if args.data is not None:
        kind = task_spec((data.get("task") or {}).get("type"), f"{args.task_recipe}: task.type").kind
        data = with_data_folder(data, args.data, kind)
    data = apply_overrides(data, overrides_of(args))
    where = Path(str(args.task_recipe)).stem
    train = from_dict(TrainConfig, data.get("train"), f"{where}.train")
    tokenizer = load_tokenizer_for(None, args.tokenizer) if args.tokenizer else None
    if args.tokenizer:  # the run's recipe.yaml names it, so `vlp eval` finds it without --tokenizer
        data.setdefault("model", {})["tokenizer"] = str(Path(args.tokenizer).resolve())

    def build(rank: int, world_size: int):
        return build_finetuning_job(
            data, rank=rank, world_size=world_size, init=args.init, tokenizer=tokenizer, where=where
        )

    return run_job(build, device=train.device, seed=train.seed, **run_options(args, where))


def task_recipes_help() -> str:
    """The built-in task recipes, one line each (name and the first sentence of its comment)."""
    from vlp.recipe import recipe_description, task_recipe_names

    names = task_recipe_names()
    width = max(len(n) for n in names)
    return "\n".join(f"  {name:<{width}}  {recipe_description(name)}" for name in names)


def register(subparsers: argparse._SubParsersAction) -> None:
    from vlp.commands.run_args import MULTI_NODE_HELP, add_run_arguments

    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune a pretrained model on a task recipe",
        description="Fine-tune on a task recipe: a recipe with a `task` section and `init` (pretrained weights: a "
        "run folder, a checkpoint folder, a save_pretrained folder or a .safetensors file). Use optim.module_lr "
        "for a lower rate on pretrained towers and optim.freeze to lock them.",
        epilog="built-in task recipes (src/vlp/tasks/recipes/NAME.yaml; the comment at the top of each says how to "
        "run and evaluate it):\n"
        + task_recipes_help()
        + "\n\n"
        + MULTI_NODE_HELP.replace("pretrain RECIPE", "finetune TASK_RECIPE"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("task_recipe", help="a built-in task recipe name (listed below) or a task recipe YAML file")
    parser.add_argument(
        "--init", default=None, help="pretrained weights (overrides the recipe's init); the run prints how many "
        "tensors of each part load from them and how many start fresh",
    )  # fmt: skip
    add_run_arguments(parser)
    parser.set_defaults(run=run)
