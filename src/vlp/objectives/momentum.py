"""The momentum (EMA) model of ALBEF's momentum distillation.

``MomentumModel(model, decay)`` holds a frozen copy of the model whose
parameters follow ``ema = decay * ema + (1 - decay) * param`` once per training
step (:meth:`update`); buffers (e.g. BatchNorm statistics) are copied. The copy
stays in eval mode so its soft targets carry no dropout noise. It is a
submodule of :class:`vlp.objectives.Pretraining`, so it moves with ``.to()``
and is saved in the state dict (a resumed run keeps its EMA).

:func:`distill_weight` is ALBEF's ramp of the distillation weight: a teacher that starts as
a copy of a randomly initialised student has nothing to teach, so its weight ``alpha`` grows
linearly from 0 over the first ``distill_warmup_steps`` optimizer steps (ALBEF: its first
epoch). The step count comes from :class:`vlp.objectives.Pretraining`, which passes it to the
objectives as ``outputs.extra["train_step"]``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from vlp.config import ConfigError
from vlp.layers.ema import WeightEMA

STEP_KEY = "train_step"  # outputs.extra key of the optimizer steps taken so far (set by Pretraining)


class MomentumModel(nn.Module):
    """An exponential moving average of ``model``; call it like the model (under ``no_grad``)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"momentum decay must be in (0, 1), got {decay} (model.momentum in the recipe)")
        self.decay = decay
        self.module = copy.deepcopy(model)
        self.module.requires_grad_(False)
        self.module.eval()
        # the frozen copy's own parameters are the shadows (held outside the module tree: they are already in it)
        shadows = list(self.module.parameters())
        object.__setattr__(self, "_ema", WeightEMA(model.named_parameters(), decay, shadows, trainable_only=False))

    def train(self, mode: bool = True) -> MomentumModel:
        super().train(mode)
        self.module.eval()  # always: soft targets without dropout
        return self

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step towards ``model``'s current parameters; buffers are copied."""
        params = list(model.parameters())
        if len(params) != len(self._ema.shadows):
            raise ValueError(f"momentum model has {len(self._ema.shadows)} parameters but the model {len(params)}")
        self._ema.shadows = list(self.module.parameters())  # fresh: wrapping (FSDP) may have replaced them
        self._ema.update(params)
        for ema_buf, buf in zip(self.module.buffers(), model.buffers()):
            ema_buf.copy_(buf)

    @torch.no_grad()
    def reset(self, model: nn.Module) -> None:
        """Copy ``model``'s current weights (e.g. after loading a pretrained checkpoint into it)."""
        self.module.load_state_dict(model.state_dict())


def distill_weight(
    alpha: float, warmup_steps: int, step: torch.Tensor | int | None, objective: str
) -> torch.Tensor | float:
    """``alpha * min(1, step / warmup_steps)``; just ``alpha`` when ``warmup_steps`` is 0.

    ``step`` is the number of optimizer steps taken before this one (0 on the first), a 0-d
    tensor from :class:`vlp.objectives.Pretraining` (the result is then a tensor on its device,
    so no host sync) or an int. ``objective`` names the objective in the error for a missing step.
    """
    if warmup_steps <= 0:
        return alpha
    if step is None:
        raise ConfigError(
            f"objectives.{objective}.distill_warmup_steps={warmup_steps}: needs the training step "
            f"(outputs.extra[{STEP_KEY!r}]), which vlp.objectives.Pretraining supplies; set it to 0 "
            "when calling the objective directly"
        )
    if isinstance(step, torch.Tensor):
        return alpha * (step.float() / warmup_steps).clamp(max=1.0)
    return alpha * min(1.0, step / warmup_steps)
