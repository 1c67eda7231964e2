"""Referring-expression metrics (the RefCOCO protocol): IoU of predicted and target boxes in pixels of
the original image, and the chance levels of a random candidate and of a centre box.

Boxes are xyxy. In the model's view they are normalized to ``[0, 1]``; :func:`view_box_to_pixels`
maps them back through the evaluation transform (``resize`` or ``center`` crop).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from vlp.metrics.boxes import elementwise_box_iou


def view_box_to_pixels(box: Any, view: Sequence[float]) -> list[float]:
    """A normalized xyxy box in the model's view -> pixels of the original image.

    ``view``: the part of the original image the model saw, xyxy in its pixels (the whole image
    ``(0, 0, width, height)`` when it was squashed; the crop window of a centre crop, as
    :meth:`vlp.data.transforms.ResizeCrop.view` gives it).
    """
    left, top, right, bottom = (float(v) for v in view)
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = right - left, bottom - top
    return [left + x1 * w, top + y1 * h, left + x2 * w, top + y2 * h]


def pixel_ious(pred: torch.Tensor, target: torch.Tensor, metas: Sequence[dict[str, Any]], records: Any,
               view_of: Callable[[int, int], Sequence[float]] | None = None) -> torch.Tensor:  # fmt: skip
    """``(N,)`` float64 IoU of predicted and target boxes (``(N, 4)`` normalized xyxy in the model's view).

    Where a sample's record (``records[meta["index"]]``) gives the image size and the pixel
    ``target_box``, both boxes are compared in float64 pixels of the original image, as RefCOCO's
    evaluation does; a prediction within 1e-3 pixel of one of the record's candidate ``boxes`` (the
    proposals it was picked from, normalized through float32) is that candidate exactly. Otherwise
    the view boxes are compared in float64. ``view_of(width, height)``: the part of an image the model
    saw (see :func:`view_box_to_pixels`); default the whole image.
    """
    view_of = view_of or (lambda width, height: (0.0, 0.0, width, height))
    pred_px, target_px = pred.double().tolist(), target.double().tolist()
    for k, meta in enumerate(metas):
        record = records[meta["index"]] if records is not None and "index" in meta else {}
        width, height, box = record.get("width"), record.get("height"), record.get("target_box")
        if not (width and height and box is not None):
            continue
        guess = view_box_to_pixels(pred_px[k], view_of(width, height))
        exact = [c for c in record.get("boxes") or [] if max(abs(a - b) for a, b in zip(c, guess)) < 1e-3]
        pred_px[k] = [float(v) for v in (exact[0] if exact else guess)]
        target_px[k] = [float(v) for v in box]
    return elementwise_box_iou(torch.tensor(pred_px, dtype=torch.float64), torch.tensor(target_px, dtype=torch.float64))


def random_candidate_chance(
    candidates: torch.Tensor, keep: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Expected hit (IoU >= 0.5) and expected IoU ``(B,)`` of picking one of each image's kept
    candidates uniformly at random: candidates ``(B, R, 4)``, keep ``(B, R)`` bool, target ``(B, 4)``.
    An image without candidates scores 0."""
    if candidates.dim() != 3 or keep.shape != candidates.shape[:2] or target.shape != (candidates.shape[0], 4):
        raise ValueError(
            f"candidates {tuple(candidates.shape)}, keep {tuple(keep.shape)}, target {tuple(target.shape)}: "
            "expected (B, R, 4), (B, R) and (B, 4)"
        )
    every = elementwise_box_iou(candidates.float(), target.float()[:, None]) * keep
    count = keep.sum(1).clamp_min(1)
    return ((every >= 0.5) & keep).sum(1) / count, every.sum(1) / count


def centre_box_chance(targets: torch.Tensor) -> dict[str, float]:
    """Accuracy at IoU >= 0.5 and mean IoU (percent) of always answering the box of the mean target
    size at the image centre; ``targets`` ``(N, 4)`` normalized xyxy."""
    w, h = (targets[:, 2:] - targets[:, :2]).double().mean(0).tolist()
    centre = targets.new_tensor([0.5 - w / 2, 0.5 - h / 2, 0.5 + w / 2, 0.5 + h / 2])
    iou = elementwise_box_iou(centre.expand_as(targets), targets).double()
    return {"accuracy": 100 * (iou >= 0.5).double().mean().item(), "miou": 100 * iou.mean().item()}


__all__ = ["centre_box_chance", "pixel_ious", "random_candidate_chance", "view_box_to_pixels"]
