"""Fine-tuning for retrieval: ITC and/or ITM on caption pairs (:class:`vlp.objectives.Pretraining`).

The ``task:`` section may name other ``objectives``. By default: ``itc`` for dual encoders, ``itc`` +
``itm`` (hard negatives) for fusion models with a dual side, ``itm`` (random negatives) for
fusion-only models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from vlp.config import ConfigError, from_dict
from vlp.data import build_loader
from vlp.objectives import Pretraining, validate_objectives
from vlp.tasks.common import has_dual, has_fusion


@dataclass
class RetrievalTask:
    """The ``task:`` section of a retrieval recipe."""

    type: str = "retrieval"
    objectives: dict[str, dict[str, Any]] = field(default_factory=dict)  # empty = chosen from the model's parts


def default_objectives(model: Any) -> dict[str, dict[str, Any]]:
    """ITC and/or ITM, as the model's parts allow (see the module docstring)."""
    fusion, dual, itm = has_fusion(model), has_dual(model), "itm" in getattr(model, "heads", {})
    if fusion and not itm:
        raise ConfigError("task: retrieval fine-tuning of a fusion model needs an itm head (model.heads.itm: {})")
    if dual and fusion:
        return {"itc": {"weight": 1.0}, "itm": {"weight": 1.0, "negatives": "hard"}}
    if dual:
        return {"itc": {"weight": 1.0}}
    if fusion:
        return {"itm": {"weight": 1.0, "negatives": "random"}}
    raise ConfigError("task: retrieval needs a dual-encoder side (model.embed_dim) or a fusion module with itm")


def build_finetuning(
    task: dict[str, Any], recipe: Any, model: Any, tokenizer: Any, *, rank: int = 0, world_size: int = 1
) -> tuple[Any, Any]:
    """``(Pretraining(model, ITC/ITM), caption-pair train loader)`` for ``vlp finetune``."""
    opts = from_dict(RetrievalTask, task, "task")
    objectives = validate_objectives(opts.objectives or default_objectives(model))
    module = Pretraining(model, objectives, tokenizer=tokenizer)
    loader = build_loader(
        recipe.data, "train", tokenizer, recipe.train.batch_size, num_workers=recipe.train.num_workers,
        rank=rank, world_size=world_size, pin_memory=torch.cuda.is_available(),
    )  # fmt: skip
    return module, loader
