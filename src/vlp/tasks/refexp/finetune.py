"""Fine-tuning for referring expressions: cross-entropy over regions or candidate boxes to the
best-IoU one, or L1 + GIoU box regression (see :mod:`vlp.tasks.refexp`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from vlp.config import ConfigError, from_dict
from vlp.data import build_loader
from vlp.data.batch import Batch
from vlp.metrics.boxes import elementwise_box_iou, giou_loss
from vlp.objectives.base import logs_to_floats
from vlp.tasks.refexp.head import (
    ensure_refexp_head,
    head_name,
    predict_normalized,
    region_scores,
    region_targets,
    resolve_mode,
)
from vlp.tasks.refexp.proposals import HEAD as PROPOSAL_HEAD
from vlp.tasks.refexp.proposals import proposal_scores


@dataclass
class RefExpTask:
    """The ``task:`` section of a referring-expression recipe."""

    type: str = "refexp"
    mode: Literal["auto", "regions", "box", "proposals"] = "auto"
    hidden: int = 0  # width of a new head's MLP (region_score: 0 = linear; box, proposal_score: 0 = pooled width)
    cells: int = 2  # proposals: ROIAlign bins per side pooled from each candidate box
    l1_weight: float = 5.0
    giou_weight: float = 2.0

    def __post_init__(self) -> None:
        if not isinstance(self.cells, int) or self.cells < 1:
            raise ConfigError(f"task.cells={self.cells!r}: expected an integer >= 1 (ROIAlign bins per side)")


def box_regression_loss(
    pred: torch.Tensor, target: torch.Tensor, l1_weight: float = 5.0, giou_weight: float = 2.0
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``l1_weight * L1 + giou_weight * (1 - GIoU)`` of ``(B, 4)`` xyxy boxes, each term averaged over
    boxes (L1 summed over the coordinates); returns the loss and its two unweighted terms."""
    l1 = (pred - target).abs().sum(-1).mean()
    giou = giou_loss(pred, target)
    return l1_weight * l1 + giou_weight * giou, {"l1": l1, "giou": giou}


def choice_loss(scores: torch.Tensor, keep: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy over each image's candidates ``scores (B, R)`` (``keep (B, R)`` bool) to the candidate
    with the highest IoU with the target box, and ``acc``: the arg-max candidate's IoU >= 0.5."""
    targets = region_targets(batch.region_boxes, keep, batch.target_boxes)
    usable = keep.any(dim=1)  # an image without candidates has nothing to choose from
    if not bool(usable.any()):
        return scores.nan_to_num(0.0, 0.0, 0.0).sum() * 0.0, {"acc": 0.0}
    loss = F.cross_entropy(scores[usable], targets[usable])
    with torch.no_grad():
        picked = batch.region_boxes[torch.arange(len(scores), device=scores.device), scores.argmax(1)]
        acc = (elementwise_box_iou(picked, batch.target_boxes)[usable] >= 0.5).float().mean()
    return loss, logs_to_floats({"acc": acc})


class RegionScorer(nn.Module):
    """Fine-tuning module (region models): cross-entropy over regions to the best-IoU region.

    Logs ``acc``: share of expressions whose arg-max region has IoU >= 0.5 with the target.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if "region_score" not in model.heads:
            raise ConfigError("refexp regions: the model has no region_score head (model.heads.region_score: {})")
        self.model = model

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        if batch.target_boxes is None or batch.region_boxes is None:
            raise ConfigError("refexp fine-tuning: the batch has no target_boxes/region_boxes (data: refcoco format)")
        scores, keep = region_scores(self.model, batch)
        return choice_loss(scores, keep, batch)


class BoxRegressor(nn.Module):
    """Fine-tuning module (patch/grid models): L1 + GIoU on the box head's output (see the module doc).

    Logs the unweighted ``l1`` and ``giou`` terms and ``acc`` (IoU >= 0.5).
    """

    def __init__(self, model: nn.Module, l1_weight: float = 5.0, giou_weight: float = 2.0) -> None:
        super().__init__()
        if "box" not in model.heads:
            raise ConfigError("refexp box: the model has no box head (model.heads.box: {})")
        self.model = model
        self.l1_weight, self.giou_weight = l1_weight, giou_weight

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        if batch.target_boxes is None:
            raise ConfigError("refexp fine-tuning: the batch has no target_boxes (data must be in refcoco format)")
        pred = predict_normalized(self.model, batch, "box")
        loss, terms = box_regression_loss(pred, batch.target_boxes.float(), self.l1_weight, self.giou_weight)
        with torch.no_grad():
            acc = (elementwise_box_iou(pred, batch.target_boxes) >= 0.5).float().mean()
        return loss, logs_to_floats({**terms, "acc": acc})


class ProposalScorer(nn.Module):
    """Fine-tuning module (patch/grid models with candidate boxes): cross-entropy over an image's
    candidates to the best-IoU one. Logs ``acc``: share whose arg-max candidate has IoU >= 0.5."""

    def __init__(self, model: nn.Module, cells: int = 2) -> None:
        super().__init__()
        if PROPOSAL_HEAD not in model.heads:
            raise ConfigError(f"refexp proposals: the model has no {PROPOSAL_HEAD} head (model.heads.{PROPOSAL_HEAD})")
        self.model = model
        self.cells = cells

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        if batch.target_boxes is None:
            raise ConfigError("refexp fine-tuning: the batch has no target_boxes (data must be in refcoco format)")
        scores, keep = proposal_scores(self.model, batch, self.cells)
        return choice_loss(scores, keep, batch)


def build_finetuning(
    task: dict[str, Any], recipe: Any, model: Any, tokenizer: Any, *, rank: int = 0, world_size: int = 1
) -> tuple[Any, Any]:
    """``(RegionScorer | BoxRegressor | ProposalScorer, refcoco train loader)`` for ``vlp finetune``;
    records the mode in ``task["mode"]``."""
    opts = from_dict(RefExpTask, task, "task")
    mode = resolve_mode(model, opts.mode)
    ensure_refexp_head(model, mode, opts.hidden, opts.cells)
    name = head_name(mode)
    recipe.model.heads[name] = model.cfg.heads[name]  # the run's saved recipe rebuilds the head
    loader = build_loader(
        recipe.data, "train", tokenizer, recipe.train.batch_size, num_workers=recipe.train.num_workers,
        rank=rank, world_size=world_size, pin_memory=torch.cuda.is_available(),
    )  # fmt: skip
    task["mode"] = mode
    if mode == "proposals":
        module: nn.Module = ProposalScorer(model, opts.cells)
    elif mode == "regions":
        module = RegionScorer(model)
    else:
        module = BoxRegressor(model, opts.l1_weight, opts.giou_weight)
    return module, loader


__all__ = [
    "BoxRegressor",
    "ProposalScorer",
    "RefExpTask",
    "RegionScorer",
    "box_regression_loss",
    "build_finetuning",
    "choice_loss",
]
