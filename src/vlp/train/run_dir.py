"""The run directory: never overwrite a run by accident, never resume it with another recipe."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from vlp.config import ConfigError, to_dict
from vlp.io.checkpoints import CheckpointManager
from vlp.recipe import parse_recipe

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


def no_checkpoint_error(path: str | Path) -> ConfigError:
    """The error of ``--resume`` on run folder ``path`` when it holds no checkpoint: what was looked for, and
    how to start afresh instead (a resume that silently started at step 0 would retrain from scratch)."""
    path = Path(path)
    fresh = "drop --resume to start a new run" + (" (with --overwrite, as it holds a run)" if holds_run(path) else "")
    where = "it does not exist" if not path.exists() else "there are none"
    return ConfigError(
        f"{path}: --resume found no checkpoint to continue from (looked for checkpoint folders "
        f"{path / 'checkpoints' / 'step_NNNNNNNN'}: {where}); {fresh}, or point --out at the run to continue"
    )


def check_run_dir(path: str | Path, *, resume: bool = False, overwrite: bool = False) -> bool:
    """The checks of :func:`prepare_run_dir` without touching anything; True when a run is to be resumed.

    ``resume`` on a folder without any checkpoint is an error (see :func:`no_checkpoint_error`); whether the
    checkpoints there are valid is for the engine to find out when it loads one."""
    path = Path(path)
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other: continue the run or start it again")
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path}: exists and is not a directory; choose another --out")
    if resume and not CheckpointManager(path / "checkpoints").list():
        raise no_checkpoint_error(path)
    existing = holds_run(path)
    if existing and not (resume or overwrite):
        raise ConfigError(
            f"{path}: already holds a run; pass --resume to continue it, --overwrite to start it again, "
            "or choose another --out"
        )
    return existing and resume


def prepare_run_dir(path: str | Path, *, resume: bool = False, overwrite: bool = False) -> bool:
    """Create ``path`` for a run. Returns True when an existing run should be resumed.

    An existing run is only touched with ``resume`` (continue it) or ``overwrite``
    (delete its artefacts and start again).
    """
    path = Path(path)
    existing = holds_run(path)
    resuming = check_run_dir(path, resume=resume, overwrite=overwrite)
    if existing and overwrite:
        for name in RUN_ARTIFACTS:
            target = path / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    path.mkdir(parents=True, exist_ok=True)
    return resuming


# Recipe keys a resumed run may change: how long it runs, how it logs and checkpoints, where and how
# fast it runs, and the learning rates (the schedule is a pure function of the step, and LRSchedule
# reads the peak lrs from the current recipe). The weights it started from no longer matter once a
# checkpoint exists. Everything else (model, objectives, data, task, batch size and accumulation,
# seed, frozen parts) defines what the checkpoint holds and must stay as the run has it.
RESUME_MAY_CHANGE = (
    *(f"train.{key}" for key in ("steps", "log_every", "checkpoint_every", "keep_checkpoints", "progress")),
    *(f"train.{key}" for key in ("tensorboard", "num_workers", "max_bad_steps", "device", "compile")),
    *(f"train.{key}" for key in ("grad_checkpointing", "distributed", "find_unused_parameters", "precision")),
    *(f"train.{key}" for key in ("ema_decay", "ema_warmup", "init", "init_parts")),
    *(f"train.{key}" for key in ("time_budget_minutes", "budget_clock", "threads")),
    *(f"optim.{key}" for key in ("lr", "weight_decay", "betas", "eps", "grad_clip")),
    "schedule",
    "init",
    "data.decoded_cache",  # the same samples bit for bit, decoded once or every time
)
_ABSENT = object()


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data:
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: data}


def _may_change(key: str, in_both: bool, also: tuple[str, ...] = ()) -> bool:
    if any(key == k or key.startswith(f"{k}.") for k in (*RESUME_MAY_CHANGE, *also)):
        return True
    # a module's lr may change, but not which modules have their own lr (that changes the optimizer's groups)
    return in_both and key.startswith("optim.module_lr.")


def with_defaults(recipe: dict[str, Any]) -> dict[str, Any]:
    """A saved vlp recipe mapping with every option the current vlp knows at its default where it was not
    written (keys vlp adds to a run, such as a fine-tuning run's ``task``, are kept as they are); anything
    that is not a parseable vlp recipe (e.g. a bare engine job's) is returned unchanged."""
    if not isinstance(recipe, dict) or "model" not in recipe:
        return recipe
    sections = {k: v for k, v in recipe.items() if k in ("model", "data", "objectives", "optim", "schedule", "train")}
    try:
        filled = to_dict(parse_recipe(sections))
    except (ConfigError, ValueError, TypeError):
        return recipe
    return {**recipe, **filled}


def recipe_differences(saved: dict[str, Any], current: dict[str, Any], may_change: tuple[str, ...] = ()) -> list[str]:
    """``"key: A in the run, B now"`` for every dotted key that differs and a resumed run may not change
    (``may_change``: dotted keys a job adds to :data:`RESUME_MAY_CHANGE`, e.g. what it does after training)."""
    # compare as YAML sees them (tuples are lists, as in the saved recipe.yaml), each with every default filled
    # in, so that an option added to vlp after the run started does not count as a change
    old = _flatten(yaml.safe_load(yaml.safe_dump(with_defaults(saved))) or {})
    new = _flatten(yaml.safe_load(yaml.safe_dump(with_defaults(current))) or {})
    found = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, _ABSENT), new.get(key, _ABSENT)
        if a == b or _may_change(key, a is not _ABSENT and b is not _ABSENT, may_change):
            continue
        shown = ["(absent)" if v is _ABSENT else yaml.safe_dump(v, default_flow_style=True).strip() for v in (a, b)]
        shown = [v[: -len("...")].strip() if v.endswith("...") else v for v in shown]  # YAML's end-of-document
        found.append(f"{key}: {shown[0]} in the run, {shown[1]} now")
    return found


def check_resume_recipe(
    run_dir: str | Path, saved: dict[str, Any], current: dict[str, Any], may_change: tuple[str, ...] = ()
) -> None:
    """Refuse to resume the run in ``run_dir`` (trained with ``saved``) with a recipe that differs in what
    its checkpoint holds; the error names each differing key and both values."""
    found = recipe_differences(saved, current, may_change)
    if found:
        shown = "; ".join(found[:12]) + (f"; ... ({len(found)} in all)" if len(found) > 12 else "")
        raise ConfigError(
            f"{run_dir}: --resume with another recipe than the run's: {shown}. Resume with the run's settings "
            f"(they are in {Path(run_dir) / 'recipe.yaml'}), or start a new run in another --out "
            f"(train.init or --init {run_dir} starts from its weights)"
        )
