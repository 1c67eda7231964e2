"""The run directory: never overwrite a run by accident."""

from __future__ import annotations

import shutil
from pathlib import Path

from vlp.config import ConfigError

# what a run writes; --overwrite removes exactly these and leaves anything else alone
RUN_ARTIFACTS = (
    "checkpoints",
    "metrics.jsonl",
    "recipe.yaml",
    "summary.json",
    "curves.png",
    "tensorboard",
)


def holds_run(path: str | Path) -> bool:
    """Whether ``path`` already contains (part of) a training run."""
    path = Path(path)
    return path.is_dir() and any((path / name).exists() for name in RUN_ARTIFACTS)


def prepare_run_dir(path: str | Path, *, resume: bool = False, overwrite: bool = False) -> bool:
    """Create ``path`` for a run. Returns True when an existing run should be resumed.

    An existing run is only touched with ``resume`` (continue it) or ``overwrite``
    (delete its artefacts and start again).
    """
    path = Path(path)
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other: continue the run or start it again")
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path}: exists and is not a directory; choose another --out")
    existing = holds_run(path)
    if existing and not (resume or overwrite):
        raise ConfigError(
            f"{path}: already holds a run; pass --resume to continue it, --overwrite to start it again, "
            "or choose another --out"
        )
    if existing and overwrite:
        for name in RUN_ARTIFACTS:
            target = path / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    path.mkdir(parents=True, exist_ok=True)
    return existing and resume
