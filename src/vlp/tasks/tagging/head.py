"""The tagging head: ``Linear(W, C)`` on the pooled image tower (before any projection), its targets
(multi-hot categories of a COCO-instances sample) and its logits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from vlp.config import ConfigError, from_dict
from vlp.data.batch import Batch
from vlp.models.heads import HeadContext, TaggingHeadConfig, build_heads, validate_heads

HEAD = "tagging"

FORMAT_HINT = "COCO instances (ShapesWorld: data.options.format: instances)"


def head_options(model: Any) -> Any:
    """The ``tagging`` head's options (:class:`~vlp.models.heads.TaggingHeadConfig`); error when it has none."""
    if HEAD not in getattr(model, "heads", {}) or HEAD not in model.cfg.heads:
        raise ConfigError("tagging: the model has no tagging head (fine-tune it with task type tagging first)")
    return from_dict(TaggingHeadConfig, model.cfg.heads[HEAD], "model.heads.tagging")


def check_tower(model: Any) -> None:
    """The task needs a model whose ``model.vision`` is the whole image tower."""
    if getattr(model, "vision", None) is None:
        raise ConfigError("tagging: the model has no image tower (model.vision)")
    if getattr(model, "towers_in_fusion", False):
        raise ConfigError("tagging: a MoME model's image tower runs inside its fusion module, not model.vision")


def ensure_tagging_head(model: Any, class_names: Sequence[str], pool: str = "auto") -> None:
    """Give ``model`` a ``tagging`` head for ``class_names`` pooled by ``pool`` (a fresh one unless it
    already fits); the model config is updated too, so the saved recipe rebuilds the same head."""
    check_tower(model)
    options = {"num_classes": len(class_names), "pool": pool, "class_names": list(class_names)}
    if pool == "first" and getattr(model.vision, "num_prefix_tokens", 0) == 0:
        raise ConfigError("task.pool: first pools a [CLS] token, which this image tower has not; use max or mean")
    if HEAD in model.heads and HEAD in model.cfg.heads:  # e.g. a tagging model tuned further: keep its head
        current = head_options(model)
        same = (current.num_classes, current.pool) == (len(class_names), pool)
        if same and current.class_names in ([], options["class_names"]):
            model.cfg.heads[HEAD] = validate_heads({HEAD: options})[HEAD]
            return
    device = next(model.parameters()).device
    model.heads[HEAD] = build_heads({HEAD: options}, HeadContext(vision_dim=model.vision.dim))[HEAD].to(device)
    model.cfg.heads[HEAD] = validate_heads({HEAD: options})[HEAD]


def tag_logits(model: Any, batch_or_images: Batch | torch.Tensor, pool: str | None = None) -> torch.Tensor:
    """``(B, C)`` category logits: image tower -> pooled tokens (the head's ``pool``) -> ``tagging`` head."""
    pool = pool or head_options(model).pool
    return model.heads[HEAD](model.pool_image_tokens(model.image_tokens(batch_or_images), pool))


def batch_targets(
    batch: Batch, num_classes: int, min_area: float = 0.0, image_size: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(targets (B, C) float multi-hot, valid (B, C) bool)`` of a batch of COCO-instances samples.

    Objects with ``meta["box_keep"]`` False (cropped out of view) are absent. With ``min_area > 0``
    a category is invalid in an image when all its kept objects there cover fewer than ``min_area``
    pixels of the ``image_size`` x ``image_size`` input (read from ``batch.region_boxes``, the
    normalized boxes of the kept objects, in order).
    """
    targets = torch.zeros(len(batch.meta), num_classes)
    small = torch.zeros(len(batch.meta), num_classes, dtype=torch.bool)
    for i, meta in enumerate(batch.meta):
        if "labels" not in meta:
            raise ConfigError(f"tagging: sample {meta.get('image', i)} has no labels; the data must be {FORMAT_HINT}")
        labels = list(meta["labels"] or [])
        keep = meta.get("box_keep") or [True] * len(labels)
        if len(keep) != len(labels):
            raise ConfigError(f"tagging: {meta.get('image', i)}: {len(labels)} labels but {len(keep)} box_keep flags")
        kept = [int(c) for c, k in zip(labels, keep) if k]
        bad = [c for c in kept if not 0 <= c < num_classes]
        if bad:
            raise ConfigError(f"tagging: {meta.get('image', i)}: label {bad[0]} is outside the {num_classes} classes")
        areas = [float("inf")] * len(kept)
        if min_area > 0 and kept:
            if batch.region_boxes is None or batch.region_boxes.shape[1] < len(kept):
                raise ConfigError(f"tagging min_area: {meta.get('image', i)}: the batch has no boxes of its objects")
            boxes = batch.region_boxes[i, : len(kept)].float().cpu()
            areas = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) * image_size**2).tolist()
        for c, area in zip(kept, areas):
            if area >= min_area:
                targets[i, c] = 1.0
            else:
                small[i, c] = True
    return targets, ~(small & (targets == 0))


def dataset_categories(dataset: Any, where: str = "data") -> list[str]:
    """The category names of a COCO-instances dataset, in label order."""
    index = getattr(dataset, "index", None)
    if index is None or "categories" not in getattr(index, "extras", {}):
        raise ConfigError(f"{where}: tagging reads {FORMAT_HINT}; this data has no categories")
    return list(index.extras["categories"])
