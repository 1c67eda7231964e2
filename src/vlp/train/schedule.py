"""Learning-rate schedules: linear warmup, then cosine, linear or constant.

The multiplier is a pure function of the optimizer step, so a resumed run only
needs the step to continue the schedule exactly. A run with a time budget
(``train.time_budget_minutes``) also passes the fraction of the budget spent:
the decay then follows whichever of steps and time is further along.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from vlp.recipe.run import ScheduleConfig


def lr_multiplier(step: int, total_steps: int, cfg: ScheduleConfig, time_progress: float = 0.0) -> float:
    """Factor applied to each group's peak lr at optimizer step ``step`` (0-based).

    Warmup is linear and reaches 1 at the end of step ``warmup_steps - 1`` (so
    step 0 already trains, as in timm/OpenCLIP: ``(step + 1) / warmup``). The
    decay then runs from 1 at ``step = warmup_steps`` to ``min_lr_ratio`` at
    ``step = total_steps``, or sooner: ``time_progress`` (the fraction of a time
    budget spent, 0 without one) moves it along when time runs out before steps.
    """
    warmup = cfg.warmup_steps
    if step < warmup:
        return (step + 1) / warmup
    if cfg.name == "constant":
        return 1.0
    decay_steps = max(1, total_steps - warmup)
    progress = min(1.0, max((step - warmup) / decay_steps, time_progress))
    if cfg.name == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:  # linear
        shape = 1.0 - progress
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * shape


class LRSchedule:
    """Sets every param group's lr to ``peak_lr * lr_multiplier(step)``.

    The peak lrs are read from the optimizer when the schedule is built (i.e.
    from the recipe, including ``module_lr``), not from a checkpoint, so that a
    resumed run uses the lrs of its current recipe.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, total_steps: int) -> None:
        self.optimizer = optimizer
        self.cfg = cfg
        self.total_steps = total_steps
        self.peak_lrs = [group["lr"] for group in optimizer.param_groups]
        self.step = 0

    def apply(self, step: int, time_progress: float = 0.0) -> float:
        """Set the lrs for optimizer step ``step`` (``time_progress``: see :func:`lr_multiplier`); returns the
        multiplier."""
        self.step = step
        factor = lr_multiplier(step, self.total_steps, self.cfg, time_progress)
        for group, peak in zip(self.optimizer.param_groups, self.peak_lrs):
            group["lr"] = peak * factor
        return factor

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "name": self.cfg.name, "warmup_steps": self.cfg.warmup_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.apply(int(state["step"]))
