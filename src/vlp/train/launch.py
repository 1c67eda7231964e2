"""Shared plumbing of ``vlp pretrain`` and ``vlp finetune``: arguments, process
group, seeding, the run-folder check, the Trainer, exit codes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vlp.data.detect import DATA_KINDS, detect_data

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


def with_data_folder(recipe: dict[str, Any], folder: str | None, kind: str) -> dict[str, Any]:
    """A plain recipe mapping reading ``folder``, recognised as data of ``kind`` (a key of DATA_KINDS).

    The recipe's image size, text length and transform stay; its loader options stay only when the
    folder holds the loader type the recipe already names (another type starts from its own defaults).
    """
    if folder is None:
        return recipe
    found = detect_data(folder, DATA_KINDS[kind])
    print(f"--data {folder}: read as {found.describe()}")
    data = dict(recipe.get("data") or {})
    options = dict(data.get("options") or {}) if data.get("type") == found.type else {}
    if found.type == "shapesworld":
        options["format"] = kind  # the ShapesWorld format of that kind
    data.update(type=found.type, root=found.root, paths=found.paths, options=options)
    return {**recipe, "data": data}


def overrides_of(args: argparse.Namespace) -> list[str]:
    extra = [f"train.steps={args.steps}"] if args.steps is not None else []
    return [*args.overrides, *extra]


def exit_code(stopped_by: str | None) -> int:
    """0 for a run that ended (its steps or its time budget), 143 / 130 for one a signal stopped."""
    from vlp.train.engine import BUDGET_STOP

    if stopped_by in (None, BUDGET_STOP):
        return 0
    return 143 if stopped_by == "SIGTERM" else 130


def run_job(args: argparse.Namespace, device: str, seed: int, build: Callable[..., object], name: str) -> int:
    """Join the process group, build the job (``build(rank=, world_size=)``), train it.

    Returns the exit code: 0 done (its steps or its time budget), 1 aborted by a guard, 130 / 143 stopped by
    SIGINT / SIGTERM (after writing a checkpoint).
    """
    from vlp.config import ConfigError
    from vlp.train import distributed as dist_utils
    from vlp.train.engine import Trainer
    from vlp.train.guards import TrainingAborted
    from vlp.train.rng import seed_everything
    from vlp.train.run_dir import holds_run

    out = Path(args.out or Path("runs") / name)
    if holds_run(out) and not (args.resume or args.overwrite):  # fail before building anything
        raise ConfigError(f"{out}: already holds a run; pass --resume to continue it or --overwrite to start again")
    info = dist_utils.init_distributed(device)
    try:
        seed_everything(seed)  # identical initial weights on every rank
        job = build(rank=info.rank, world_size=info.world_size)
        trainer = Trainer(
            job.module, job.loader, train=job.train, optim=job.optim, schedule=job.schedule, run_dir=out,
            recipe=job.recipe, resume=args.resume, overwrite=args.overwrite, dist=info,
        )  # fmt: skip
        try:
            result = trainer.fit()
        except TrainingAborted as err:
            print(f"vlp {args.command}: aborted (rank {info.rank}): {err}", file=sys.stderr)
            return 1
    finally:
        dist_utils.cleanup()
    code = exit_code(result.stopped_by)
    if info.world_size > 1:
        dist_utils.exit_process(code)
    return code
