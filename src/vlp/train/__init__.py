"""The training engine: loop, optimizer groups, schedules, checkpoints, distributed.

``Trainer(module, loader, train=, optim=, schedule=, run_dir=).fit()`` trains any
module whose ``forward(batch)`` returns ``(loss, logs)``; ``vlp pretrain`` and
``vlp finetune`` build that module and loader from a recipe (:mod:`vlp.train.jobs`).
Names are imported lazily: ``vlp.recipe.run`` is read by every recipe and must
not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Trainer": "vlp.train.engine",
    "TrainResult": "vlp.train.engine",
    "TrainingAborted": "vlp.train.guards",
    "CheckpointManager": "vlp.io.checkpoints",
    "ResumableLoader": "vlp.train.loader",
    "Job": "vlp.train.jobs",
    "build_pretraining_job": "vlp.train.jobs",
    "build_finetuning_job": "vlp.train.jobs",
    "load_init_weights": "vlp.train.jobs",
    "build_optimizer": "vlp.train.optim",
    "param_groups": "vlp.train.optim",
    "freeze": "vlp.train.optim",
    "LRSchedule": "vlp.train.schedule",
    "lr_multiplier": "vlp.train.schedule",
    "plot_run": "vlp.train.plot",
    "OptimConfig": "vlp.recipe.run",
    "ScheduleConfig": "vlp.recipe.run",
    "TrainConfig": "vlp.recipe.run",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vlp.train' has no attribute {name!r}")
