"""``Pretraining``: the model plus its weighted objectives, as one trainable module.

``forward(batch) -> (loss, logs)`` runs the shared unimodal pass ``model(batch)``
once (and the momentum model's, when distillation is on), then every objective
on it, and returns ``sum(weight * loss)`` with a flat dict of floats:
``loss``, ``loss_<name>`` for each objective and the objectives' own metrics
(``itc_acc``, ``itm_acc``, ``mlm_acc``, ...). The training engine calls
:meth:`after_step` after each optimizer step, which advances the EMA and the
step counter.

The counter (buffer ``step``: optimizer steps taken so far) is in the state dict,
so a resumed run continues ALBEF's ramp of the distillation weight where it
stopped; objectives read it as ``outputs.extra["train_step"]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from vlp.objectives.base import Objective, logs_to_floats
from vlp.objectives.momentum import STEP_KEY, MomentumModel
from vlp.objectives.registry import build_objectives


def model_momentum(model: nn.Module) -> float:
    """The EMA decay from the model's config (``ModelConfig.momentum``), 0.0 if it has none."""
    for attr in ("cfg", "config"):
        value = getattr(getattr(model, attr, None), "momentum", None)
        if isinstance(value, (int, float)):
            return float(value)
    return 0.0


class Pretraining(nn.Module):
    """``Pretraining(model, objectives, momentum=None)``.

    ``objectives``: what :func:`vlp.objectives.build_objectives` returns (name ->
    ``(weight, module)``) or a recipe's ``objectives`` mapping (name -> options),
    which is built here. ``momentum``: the EMA decay; None reads the model
    config's ``momentum``; 0 turns distillation off.
    """

    def __init__(
        self,
        model: nn.Module,
        objectives: Mapping[str, Any],
        momentum: float | None = None,
        tokenizer: Any = None,
    ) -> None:
        super().__init__()
        if objectives and not all(isinstance(v, tuple) for v in objectives.values()):
            objectives = build_objectives(objectives, tokenizer=tokenizer)
        if not objectives:
            raise ValueError("Pretraining needs at least one objective (the recipe's objectives section is empty)")
        self.model = model
        self.objectives = nn.ModuleDict({name: module for name, (_, module) in objectives.items()})
        self.weights = {name: float(weight) for name, (weight, _) in objectives.items()}
        decay = model_momentum(model) if momentum is None else momentum
        self.ema = MomentumModel(model, decay) if decay > 0 else None
        # A buffer, not an int: it is checkpointed with the weights and lives on the model's device,
        # so the objectives' ramps are computed there without a host sync.
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def forward(self, batch) -> tuple[torch.Tensor, dict[str, float]]:
        outputs = self.model(batch)
        outputs.extra[STEP_KEY] = self.step
        if self.ema is not None:
            with torch.no_grad():
                outputs.momentum = self.ema(batch)
        total = None
        logs: dict[str, Any] = {}
        for name, objective in self.objectives.items():
            # Objective.compute keeps logs as tensors (one host sync below); any other module: its forward
            if isinstance(objective, Objective):
                loss, extra = objective.compute(outputs, batch)
            else:
                loss, extra = objective(outputs, batch)
            weighted = self.weights[name] * loss
            total = weighted if total is None else total + weighted
            logs[f"loss_{name}"] = loss.detach()
            logs.update(extra)
        logs["loss"] = total.detach()
        return total, logs_to_floats(logs)

    @torch.no_grad()
    def after_step(self) -> None:
        """Advance the momentum model and the step counter (once per optimizer step)."""
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
