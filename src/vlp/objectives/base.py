"""The objectives family and what every objective shares.

An objective is an ``nn.Module`` with ``forward(outputs: ModelOutputs, batch:
Batch) -> (loss, logs)``: ``loss`` a scalar tensor, ``logs`` a ``dict[str, float]``.
Subclasses implement :meth:`Objective.compute`, which returns the logs as 0-d
tensors; :class:`vlp.objectives.Pretraining` calls it directly so that all the
logs of one step reach the host in a single transfer instead of one sync each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from vlp.config import ConfigError, KeyedFamily
from vlp.core.outputs import VisualTokens
from vlp.objectives.distributed import dist_info


class ObjectiveConfig(KeyedFamily):
    """Config family of pretraining objectives, keyed by the objective's name in a recipe's ``objectives``;
    a member is registered with ``part(ObjectiveConfig, name, ObjectiveModule)``."""

    members: ClassVar[dict[str, type]] = {}
    noun: ClassVar[str] = "objective"
    # every option is saved (as before objectives were typed): a run resumes with the settings it had
    save_defaults: ClassVar[bool] = True


@dataclass(eq=False)
class ObjectiveOptions(ObjectiveConfig):
    """Options every objective takes: its weight in the summed pretraining loss."""

    weight: float = 1.0

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ValueError(f"weight must be >= 0, got {self.weight}")


Logs = dict[str, torch.Tensor]


class Objective(nn.Module):
    """Base of every objective: ``forward(outputs, batch) -> (loss, logs of floats)``."""

    name: ClassVar[str] = "objective"

    def compute(self, outputs: Any, batch: Any) -> tuple[torch.Tensor, Logs]:
        raise NotImplementedError

    def forward(self, outputs: Any, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        loss, logs = self.compute(outputs, batch)
        return loss, logs_to_floats(logs)


def logs_to_floats(logs: dict[str, Any]) -> dict[str, float]:
    """Convert tensor logs to Python floats with one device->host copy."""
    keys = [k for k, v in logs.items() if isinstance(v, torch.Tensor)]
    out = {k: float(v) for k, v in logs.items() if not isinstance(v, torch.Tensor)}
    if keys:
        device = logs[keys[0]].device
        values = torch.stack([logs[k].detach().float().reshape(()).to(device) for k in keys]).cpu().tolist()
        out.update(zip(keys, values))
    return out


def require(value: Any, what: str, objective: str, hint: str = "") -> Any:
    """``value`` or a clear error saying which objective needed ``what``."""
    if value is None:
        raise ConfigError(f"objectives.{objective}: needs {what}, which is None{'; ' + hint if hint else ''}")
    return value


def select_visual(image: VisualTokens, index: torch.Tensor) -> VisualTokens:
    """The visual tokens of the samples ``index`` (a (K,) long tensor), in that order."""
    return VisualTokens(
        tokens=image.tokens[index],
        mask=image.mask[index],
        positions=None if image.positions is None else image.positions[index],
    )


def cat_visual(parts: list[VisualTokens]) -> VisualTokens:
    """Concatenate visual tokens along the batch dimension."""
    positions = [p.positions for p in parts]
    return VisualTokens(
        tokens=torch.cat([p.tokens for p in parts]),
        mask=torch.cat([p.mask for p in parts]),
        positions=None if any(p is None for p in positions) else torch.cat(positions),
    )


def make_generator(seed: int | None, device: torch.device, cache: dict[str, torch.Generator]) -> torch.Generator | None:
    """A per-device generator seeded with ``seed + rank`` (created once, then advanced), or None = global RNG.

    The rank is added so that ranks do not draw identical masks. With ``seed``
    unset the global RNG is used, which the training engine checkpoints, so
    resumed runs draw the same masks as uninterrupted ones.
    """
    if seed is None:
        return None
    key = str(device)
    if key not in cache:
        cache[key] = torch.Generator(device=device).manual_seed(seed + dist_info()[0])
    return cache[key]
