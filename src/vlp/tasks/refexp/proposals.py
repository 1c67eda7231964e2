"""Referring expressions for patch/grid models by scoring candidate boxes (``mode: proposals``).

The RefCOCO "ground-truth objects as candidates" protocol (MAttNet, UNITER's evaluation on
annotated boxes): every image comes with candidate boxes (RefCOCO's ``instances.json`` lists
every annotated object of the image; a detector's boxes work the same way), the model gives one
logit per candidate, training is softmax cross-entropy to the candidate with the highest IoU with
the target box, and the prediction is the arg-max candidate's box. Regressing a box from [CLS]
collapses to a centre box for small patch/grid models; choosing among candidates does not.

A candidate's feature is ROIAlign-pooled (:func:`vlp.layers.roi_align.roi_align`) from the image token map,
rebuilt from the tokens' ``(row, col)`` positions: the fused image tokens when the fusion module
updates them (ViLT, Pixel-BERT, METER), else the visual encoder's tokens (ALBEF, whose fusion is
text-side cross-attention). The ``proposal_score`` head (:class:`vlp.models.heads.ProposalScoreHead`)
scores it together with its box geometry and the pooled text-image output (the fused [CLS]).
"""

from __future__ import annotations

from typing import Any

import torch

from vlp.config import ConfigError
from vlp.data.batch import Batch
from vlp.layers.roi_align import roi_align

HEAD = "proposal_score"


def fused_image_width(model: Any) -> int:
    """Width of the tokens candidates are pooled from: the fused image tokens' if the fusion module
    returns them, else the visual encoder's."""
    width = int(getattr(model.fusion, "image_dim", 0) or 0)
    return width or int(model.vision.dim)


def grid_shape(model: Any, images: torch.Tensor) -> tuple[int, int]:
    """``(h, w)`` of the visual token grid for ``images (B, 3, H, W)`` (patch or grid encoder)."""
    height, width = images.shape[-2:]
    vision = model.vision
    if hasattr(vision, "patch_size"):
        return height // vision.patch_size, width // vision.patch_size
    backbone = getattr(getattr(vision, "config", None), "backbone", None)
    if backbone is not None and hasattr(backbone, "grid_size"):
        return backbone.grid_size((height, width))
    raise ConfigError(f"refexp proposals: cannot tell the token grid of a {type(vision).__name__} (patch or grid only)")


def token_map(tokens: torch.Tensor, positions: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Scatter tokens back onto their grid: ``(B, N, D)`` + positions ``(B, N, 2)`` -> ``(B, D, h, w)``.

    Positions are normalized ``(row, col)`` cell centres; prefix tokens ([CLS], at ``(-1, -1)``)
    are dropped. Cells without a token (Pixel-BERT's pixel sampling in training) stay zero.
    """
    h, w = grid
    batch, _, dim = tokens.shape
    cell = (positions[..., 0] >= 0) & (positions[..., 1] >= 0)
    rows = (positions[..., 0] * h).floor().long().clamp(0, h - 1)
    cols = (positions[..., 1] * w).floor().long().clamp(0, w - 1)
    # prefix tokens go to a spare slot past the grid that is cut off afterwards
    index = torch.where(cell, rows * w + cols, torch.full_like(rows, h * w))
    out = tokens.new_zeros(batch, h * w + 1, dim)
    out = out.scatter(1, index.unsqueeze(-1).expand(-1, -1, dim), tokens)
    return out[:, : h * w].transpose(1, 2).reshape(batch, dim, h, w)


def pool_candidates(features: torch.Tensor, boxes: torch.Tensor, cells: int = 2) -> torch.Tensor:
    """ROIAlign ``cells x cells`` bins from each candidate: features ``(B, D, h, w)``, boxes
    ``(B, R, 4)`` normalized xyxy -> ``(B, R, D * cells * cells)``."""
    batch, count = boxes.shape[:2]
    h, w = features.shape[-2:]
    scale = boxes.new_tensor([w, h, w, h])
    image = torch.arange(batch, device=boxes.device, dtype=boxes.dtype).repeat_interleave(count)
    rois = torch.cat([image[:, None], (boxes.reshape(-1, 4) * scale)], dim=1)  # box corners in cell units
    pooled = roi_align(features, rois, cells, spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    return pooled.reshape(batch, count, -1)


def box_geometry(boxes: torch.Tensor) -> torch.Tensor:
    """UNITER's 7-d box feature ``(x1, y1, x2, y2, w, h, w*h)`` of normalized xyxy boxes ``(..., 4)``."""
    wh = boxes[..., 2:] - boxes[..., :2]
    return torch.cat([boxes, wh, wh[..., :1] * wh[..., 1:]], dim=-1)


def proposal_scores(model: Any, batch: Batch, cells: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scores (B, R), keep (B, R))``: one logit per candidate box, ``-inf`` at padded candidates."""
    if batch.region_boxes is None or batch.region_mask is None:
        raise ConfigError(
            "refexp (proposals): the batch has no candidate boxes; use RefCOCO-format data (its instances.json "
            "lists every object of an image) or task mode: box"
        )
    if batch.images is None:
        raise ConfigError("refexp (proposals): the batch has no images to pool candidate features from")
    ids, mask, types = model.text_inputs(batch)
    image = model.image_tokens(batch)
    fused = model.fuse(model.text_tokens(ids, mask, types), mask, image)
    tokens = image.tokens
    if getattr(model.fusion, "image_dim", 0) and fused.image is not None:
        tokens = fused.image[:, fused.image.shape[1] - image.tokens.shape[1] :]  # the encoder's tokens, fused
    if image.positions is None:
        raise ConfigError("refexp (proposals): the visual encoder gives no token positions to rebuild its grid")
    features = token_map(tokens, image.positions, grid_shape(model, batch.images))
    keep = batch.region_mask
    # padded slots get the whole image (a well-formed box); their scores are masked below
    boxes = torch.where(keep[..., None], batch.region_boxes.float(), batch.region_boxes.new_tensor([0, 0, 1, 1]))
    pooled = pool_candidates(features, boxes.to(features.dtype), cells)
    scores = model.heads[HEAD](pooled, box_geometry(boxes).to(pooled.dtype), fused.pooled).float()
    return scores.masked_fill(~keep, float("-inf")), keep


__all__ = ["HEAD", "box_geometry", "fused_image_width", "grid_shape", "pool_candidates", "proposal_scores", "token_map"]
