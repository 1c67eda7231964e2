"""``vlp info``: versions, device, threads, the model recipes and the task recipes (one line each)."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    import platform

    import torch

    import vlp

    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if cuda else "cpu"
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU"
    print(f"vlp        {vlp.__version__}")
    print(f"python     {platform.python_version()}")
    print(f"torch      {torch.__version__} ({build} build)")
    print(f"device     {device}" + (f" x{torch.cuda.device_count()}" if cuda else ""))
    print(f"threads    {torch.get_num_threads()}")
    print(f"bf16       {'yes' if (cuda and torch.cuda.is_bf16_supported()) or not cuda else 'no'}")
    models = vlp.list_models()
    print(f"recipes    {len(models)}: {', '.join(models) if models else '(none yet)'}")
    from vlp.commands.finetune import task_recipes_help
    from vlp.recipe import task_recipe_names

    print(f"task recipes {len(task_recipe_names())} (vlp finetune NAME):")
    print(task_recipes_help())
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("info", help="print versions, device, threads, model recipes and task recipes")
    parser.set_defaults(run=run)
