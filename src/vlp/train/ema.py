"""An exponential moving average of the weights kept by the engine.

``ema = decay * ema + (1 - decay) * weights`` after every optimizer step, for
the floating-point parameters of the (unwrapped) model. Evaluating the EMA
weights is a cheap, well-known improvement for long runs (timm's ModelEmaV2).
Under FSDP the shadow copies are sharded like the parameters themselves.
"""

from __future__ import annotations

import torch
from torch import nn


def _full(tensor: torch.Tensor) -> torch.Tensor:
    full_tensor = getattr(tensor, "full_tensor", None)  # DTensor (FSDP): gather the shards
    return (full_tensor() if full_tensor is not None else tensor).detach().to("cpu")


class ModelEMA:
    def __init__(self, module: nn.Module, decay: float) -> None:
        self.decay = decay
        self.names: list[str] = []
        self.params: list[torch.Tensor] = []
        for name, param in module.named_parameters():
            if param.dtype.is_floating_point and param.requires_grad:  # frozen towers never change
                self.names.append(name)
                self.params.append(param)
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        # lerp_(target, w) = self + w * (target - self) = decay * self + (1 - decay) * target
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Full CPU tensors by parameter name (a collective under FSDP)."""
        return {name: _full(t) for name, t in zip(self.names, self.shadow)}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = [n for n in self.names if n not in state]
        if missing:
            raise KeyError(f"EMA state lacks {missing[:5]}")
        for name, shadow in zip(self.names, self.shadow):
            value = state[name]
            if hasattr(shadow, "device_mesh"):  # DTensor: keep only this rank's shard
                from torch.distributed.tensor import distribute_tensor

                value = distribute_tensor(value.to(shadow.device), shadow.device_mesh, shadow.placements)
            shadow.copy_(value)

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        """Write the EMA weights into ``module`` (e.g. an evaluation copy)."""
        params = dict(module.named_parameters())
        for name, shadow in zip(self.names, self.shadow):
            params[name].copy_(shadow)
