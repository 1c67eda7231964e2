"""Shared plumbing of ``vlp pretrain``, ``vlp finetune`` and ``vlp train-generation``: a data folder
in a recipe, the process group, seeding, the run-folder check, the Trainer, exit codes."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vlp.data.detect import DATA_KINDS, detect_data
from vlp.train import distributed as dist_utils
from vlp.train.engine import BUDGET_STOP, Trainer
from vlp.train.guards import TrainingAborted
from vlp.train.rng import seed_everything
from vlp.train.run_dir import check_run_dir


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


def exit_code(stopped_by: str | None) -> int:
    """0 for a run that ended (its steps or its time budget), 143 / 130 for one a signal stopped."""
    if stopped_by in (None, BUDGET_STOP):
        return 0
    return 143 if stopped_by == "SIGTERM" else 130


def run_job(
    build: Callable[..., object],
    *,
    out: str | Path,
    device: str,
    seed: int,
    resume: bool = False,
    overwrite: bool = False,
    command: str = "train",
) -> int:
    """Join the process group, build the job (``build(rank=, world_size=)``), train it in run folder ``out``.

    Returns the exit code: 0 done (its steps or its time budget), 1 aborted by a guard, 130 / 143 stopped by
    SIGINT / SIGTERM (after writing a checkpoint).
    """
    out = Path(out)
    check_run_dir(out, resume=resume, overwrite=overwrite)  # fail before building anything (the engine checks again)
    info = dist_utils.init_distributed(device)
    try:
        seed_everything(seed)  # identical initial weights on every rank
        job = build(rank=info.rank, world_size=info.world_size)
        trainer = Trainer(
            job.module, job.loader, train=job.train, optim=job.optim, schedule=job.schedule, run_dir=out,
            recipe=job.recipe, resume=resume, overwrite=overwrite, dist=info,
        )  # fmt: skip
        try:
            result = trainer.fit()
        except TrainingAborted as err:
            print(f"vlp {command}: aborted (rank {info.rank}): {err}", file=sys.stderr)
            return 1
    finally:
        dist_utils.cleanup()
    code = exit_code(result.stopped_by)
    if info.world_size > 1:
        dist_utils.exit_process(code)
    return code
