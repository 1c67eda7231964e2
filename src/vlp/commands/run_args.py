"""The options ``vlp pretrain`` and ``vlp finetune`` share, and what they mean for a run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

MULTI_NODE_HELP = """\
distributed (PyTorch's engine; nccl on GPUs, gloo on CPUs; DDP, or FSDP with --set train.distributed=fsdp):
  one machine, 8 GPUs:
    torchrun --standalone --nproc_per_node 8 -m vlp.cli pretrain RECIPE
  2 machines x 8 GPUs (run on each machine, --node_rank 0 on the first, 1 on the second):
    torchrun --nnodes 2 --node_rank 0 --nproc_per_node 8 --rdzv_backend c10d \\
             --rdzv_endpoint HOST0:29500 -m vlp.cli pretrain RECIPE
  train.batch_size is per rank: the global batch is batch_size x grad_accum x ranks.
"""


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None, help="run folder (default: runs/<recipe name>)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a recipe value, e.g. --set train.batch_size=8 (repeatable)",
    )  # fmt: skip
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (same as --set train.steps=N)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="delete the run in --out and start again")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder/file (default: the recipe's)")
    parser.add_argument(
        "--data", default=None, metavar="FOLDER", help="dataset folder to train on; its format is recognised from "
        "its files and said (sets data.type, data.root and data.paths; --set data.KEY=VALUE still wins)",
    )  # fmt: skip


def overrides_of(args: argparse.Namespace) -> list[str]:
    extra = [f"train.steps={args.steps}"] if args.steps is not None else []
    return [*args.overrides, *extra]


def run_options(args: argparse.Namespace, name: str) -> dict[str, Any]:
    """The keyword arguments of :func:`vlp.train.launch.run_job` that the options give (run folder
    ``--out``, default ``runs/<name>``; ``--resume``, ``--overwrite``; the command's name)."""
    out = Path(args.out or Path("runs") / name)
    return {"out": out, "resume": args.resume, "overwrite": args.overwrite, "command": args.command}
