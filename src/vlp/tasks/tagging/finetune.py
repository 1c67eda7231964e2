"""Fine-tuning the tagging head (and the tower under it) with binary cross-entropy."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from vlp.config import ConfigError, from_dict
from vlp.data import build_loader
from vlp.data.batch import Batch
from vlp.objectives.base import logs_to_floats
from vlp.tasks.tagging.head import (
    FORMAT_HINT,
    HEAD,
    batch_targets,
    check_tower,
    dataset_categories,
    ensure_tagging_head,
    head_options,
    tag_logits,
)


@dataclass
class TaggingTask:
    """The ``task:`` section of a tagging recipe."""

    type: str = "tagging"
    pool: Literal["auto", "first", "max", "mean"] = "auto"  # auto = the model's image_pool
    min_area: float = 0.0  # objects below this many pixels of the model input are ignored
    # written by build_finetuning: the category names the head's outputs stand for, in label order
    class_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.min_area >= 0:  # also rejects NaN
            raise ConfigError(f"task.min_area: expected a number of pixels >= 0, got {self.min_area}")


class TaggingClassifier(nn.Module):
    """Fine-tuning module: ``forward(batch) -> (loss, logs)``; the mean BCE of the valid labels.

    Logs ``tag_acc`` (per-label accuracy at probability 0.5) and ``positives`` (share of present labels).
    """

    def __init__(self, model: nn.Module, min_area: float = 0.0, image_size: int = 0) -> None:
        super().__init__()
        options = head_options(model)
        self.model, self.pool, self.num_classes = model, options.pool, options.num_classes
        self.min_area, self.image_size = min_area, image_size

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        if batch.images is None and batch.region_features is None:
            raise ConfigError(f"tagging: the batch has no images; the data must be {FORMAT_HINT}")
        logits = tag_logits(self.model, batch, self.pool).float()
        targets, valid = batch_targets(batch, self.num_classes, self.min_area, self.image_size)
        targets, valid = targets.to(logits.device), valid.to(logits.device)
        if not bool(valid.any()):
            return logits.sum() * 0.0, {"tag_acc": 0.0, "positives": 0.0}
        loss = F.binary_cross_entropy_with_logits(logits[valid], targets[valid])
        with torch.no_grad():
            acc = ((logits[valid] > 0) == (targets[valid] > 0.5)).float().mean()  # logit > 0 <=> probability > 0.5
        return loss, logs_to_floats({"tag_acc": acc, "positives": targets[valid].mean()})


def build_finetuning(
    task: dict[str, Any], recipe: Any, model: Any, tokenizer: Any, *, rank: int = 0, world_size: int = 1
) -> tuple[Any, Any]:
    """``(TaggingClassifier, COCO-instances train loader)``; records ``class_names`` in the task."""
    opts = from_dict(TaggingTask, task, "task")
    check_tower(model)
    loader = build_loader(
        recipe.data, "train", tokenizer, recipe.train.batch_size, num_workers=recipe.train.num_workers,
        rank=rank, world_size=world_size, pin_memory=torch.cuda.is_available(),
    )  # fmt: skip
    names = dataset_categories(loader.dataset)
    if opts.class_names and opts.class_names != names:
        raise ConfigError(f"task.class_names: {opts.class_names} differ from the data's categories {names}; remove it")
    ensure_tagging_head(model, names, opts.pool)
    recipe.model.heads[HEAD] = model.cfg.heads[HEAD]  # the run's saved recipe rebuilds the head
    task["class_names"] = names
    return TaggingClassifier(model, opts.min_area, recipe.data.image_size), loader
