"""The one exponential moving average of weights in vlp: ``shadow = decay * shadow + (1 - decay) * live``.

Used for ALBEF's momentum teacher (:class:`vlp.objectives.momentum.MomentumModel`, whose shadow
tensors are the parameters of a frozen model copy) and for the engine's weight average
(``train.ema_decay``, shadow copies saved as ``ema.safetensors``; ``train.ema_warmup`` caps the decay
by :func:`warmup_decay` while the run is young). Under FSDP the shadows are
sharded like the parameters; :meth:`WeightEMA.state_dict` gathers them.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def warmup_decay(decay: float, updates: int) -> float:
    """``min(decay, (1 + n) / (10 + n))`` after ``n`` updates: the warm-up of TensorFlow's
    ExponentialMovingAverage (``num_updates``), so the random initial weights do not dominate a short run's
    average (at decay 0.999 they would still weigh ``0.999 ** 1000 = 37 %`` of it after 1000 steps)."""
    if updates < 0:
        raise ValueError(f"EMA warm-up: updates must be >= 0, got {updates}")
    return min(decay, (1.0 + updates) / (10.0 + updates))


def _full(tensor: torch.Tensor) -> torch.Tensor:
    full_tensor = getattr(tensor, "full_tensor", None)  # DTensor (FSDP): gather the shards
    return (full_tensor() if full_tensor is not None else tensor).detach().to("cpu")


class WeightEMA:
    """Shadows of named tensors that follow them by ``update``.

    ``named``: ``(name, tensor)`` pairs to follow (e.g. ``module.named_parameters()``); floating-point
    tensors that require grad only, unless ``trainable_only=False``. ``shadows``: tensors to use as the
    shadows (same order and shapes), e.g. a frozen copy's parameters; default: fresh clones.
    """

    def __init__(
        self,
        named: Iterable[tuple[str, torch.Tensor]],
        decay: float,
        shadows: list[torch.Tensor] | None = None,
        trainable_only: bool = True,
    ) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.names: list[str] = []
        live: list[torch.Tensor] = []
        for name, tensor in named:
            if not trainable_only or (tensor.dtype.is_floating_point and tensor.requires_grad):
                self.names.append(name)
                live.append(tensor)
        if shadows is not None and len(shadows) != len(live):
            raise ValueError(f"EMA: {len(shadows)} shadow tensors for {len(live)} followed tensors")
        self.shadows = list(shadows) if shadows is not None else [t.detach().clone() for t in live]
        self.live = live

    @torch.no_grad()
    def update(self, live: Iterable[torch.Tensor] | None = None, decay: float | None = None) -> None:
        """One step towards ``live`` (default: the tensors given at construction); ``decay`` overrides the
        constructor's for this step (e.g. a warm-up)."""
        current = [t.detach() for t in (self.live if live is None else live)]
        if len(current) != len(self.shadows):
            raise ValueError(f"EMA: {len(current)} tensors given for {len(self.shadows)} shadows")
        weight = 1.0 - (self.decay if decay is None else decay)
        # lerp_(target, w) = self + w * (target - self) = decay * self + (1 - decay) * target
        torch._foreach_lerp_(self.shadows, current, weight)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Full CPU tensors by name (a collective under FSDP)."""
        return {name: _full(t) for name, t in zip(self.names, self.shadows)}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = [n for n in self.names if n not in state]
        if missing:
            raise KeyError(f"EMA state lacks {missing[:5]}")
        for name, shadow in zip(self.names, self.shadows):
            value = state[name]
            if hasattr(shadow, "device_mesh"):  # DTensor: keep only this rank's shard
                from torch.distributed.tensor import distribute_tensor  # only under FSDP

                value = distribute_tensor(value.to(shadow.device), shadow.device_mesh, shadow.placements)
            shadow.copy_(value)

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        """Write the shadows into ``module``'s parameters of the same names (e.g. an evaluation copy)."""
        params = dict(module.named_parameters())
        for name, shadow in zip(self.names, self.shadows):
            params[name].copy_(shadow)


__all__ = ["WeightEMA", "warmup_decay"]
