"""Box formats, IoU, generalized IoU (and its loss) and accuracy@IoU for grounding.

Boxes are float tensors ``(..., 4)`` in continuous coordinates (no "+1" pixel
convention, as in torchvision and DETR). Formats:

- ``xyxy``: (x1, y1, x2, y2), corners;
- ``xywh``: (x, y, w, h), top-left corner and size (COCO / RefCOCO json);
- ``cxcywh``: (cx, cy, w, h), centre and size (DETR / MDETR heads).
"""

from __future__ import annotations

import torch

BOX_FORMATS = ("xyxy", "xywh", "cxcywh")


def _check(boxes: torch.Tensor, name: str = "boxes") -> torch.Tensor:
    boxes = torch.as_tensor(boxes)
    if boxes.shape[-1:] != (4,):
        raise ValueError(f"{name} must have shape (..., 4), got {tuple(boxes.shape)}")
    return boxes if boxes.is_floating_point() else boxes.float()


def box_convert(boxes: torch.Tensor, in_fmt: str, out_fmt: str) -> torch.Tensor:
    """Convert ``(..., 4)`` boxes between ``xyxy``, ``xywh`` and ``cxcywh``."""
    for fmt in (in_fmt, out_fmt):
        if fmt not in BOX_FORMATS:
            raise ValueError(f"unknown box format {fmt!r}; allowed: {', '.join(BOX_FORMATS)}")
    boxes = _check(boxes)
    if in_fmt == out_fmt:
        return boxes.clone()
    a, b, c, d = boxes.unbind(-1)
    if in_fmt == "xywh":
        x1, y1, x2, y2 = a, b, a + c, b + d
    elif in_fmt == "cxcywh":
        x1, y1, x2, y2 = a - c / 2, b - d / 2, a + c / 2, b + d / 2
    else:
        x1, y1, x2, y2 = a, b, c, d
    if out_fmt == "xyxy":
        return torch.stack([x1, y1, x2, y2], -1)
    if out_fmt == "xywh":
        return torch.stack([x1, y1, x2 - x1, y2 - y1], -1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], -1)


def xywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    return box_convert(boxes, "xywh", "xyxy")


def xyxy_to_xywh(boxes: torch.Tensor) -> torch.Tensor:
    return box_convert(boxes, "xyxy", "xywh")


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    return box_convert(boxes, "cxcywh", "xyxy")


def xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    return box_convert(boxes, "xyxy", "cxcywh")


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Area of ``(..., 4)`` xyxy boxes; degenerate (inverted) boxes count as 0."""
    boxes = _check(boxes)
    return (boxes[..., 2] - boxes[..., 0]).clamp_min(0) * (boxes[..., 3] - boxes[..., 1]).clamp_min(0)


def _inter_union(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # a and b broadcast against each other: (..., 4)
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    wh = (rb - lt).clamp_min(0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a) + box_area(b) - inter
    return inter, union


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    # 0/0 happens only for two empty boxes; define their overlap as 0 rather than NaN
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(num.dtype).tiny), torch.zeros_like(num))


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of xyxy boxes: (N, 4) x (M, 4) -> (N, M)."""
    a, b = _check(boxes1, "boxes1"), _check(boxes2, "boxes2")
    inter, union = _inter_union(a[:, None, :], b[None, :, :])
    return _safe_div(inter, union)


def elementwise_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU of matched pairs of xyxy boxes: (..., 4) x (..., 4) -> (...)."""
    a, b = _check(boxes1, "boxes1"), _check(boxes2, "boxes2")
    inter, union = _inter_union(a, b)
    return _safe_div(inter, union)


def _giou_from(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    for name, boxes in (("boxes1", a), ("boxes2", b)):
        if (boxes[..., 2:] < boxes[..., :2]).any():
            raise ValueError(f"generalized IoU needs xyxy boxes with x2 >= x1 and y2 >= y1; {name} has inverted boxes")
    inter, union = _inter_union(a, b)
    iou = _safe_div(inter, union)
    lt = torch.minimum(a[..., :2], b[..., :2])
    rb = torch.maximum(a[..., 2:], b[..., 2:])
    wh = (rb - lt).clamp_min(0)
    hull = wh[..., 0] * wh[..., 1]
    return iou - _safe_div(hull - union, hull)


def generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise generalized IoU (Rezatofighi et al. 2019) in [-1, 1]: (N, 4) x (M, 4) -> (N, M).

    GIoU = IoU - |C \\ (A u B)| / |C| with C the smallest box enclosing A and B.
    """
    a, b = _check(boxes1, "boxes1"), _check(boxes2, "boxes2")
    return _giou_from(a[:, None, :], b[None, :, :])


def elementwise_generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Generalized IoU of matched pairs: (..., 4) x (..., 4) -> (...)."""
    return _giou_from(_check(boxes1, "boxes1"), _check(boxes2, "boxes2"))


def giou_loss(pred: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """``1 - GIoU`` of matched xyxy box pairs (..., 4), reduced by ``mean`` | ``sum`` | ``none``.

    Differentiable in ``pred``; in [0, 2].
    """
    loss = 1.0 - elementwise_generalized_box_iou(pred, target)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def accuracy_at_iou(pred: torch.Tensor, target: torch.Tensor, threshold: float = 0.5) -> float:
    """Fraction of matched pairs whose IoU is >= ``threshold`` (RefCOCO "Acc@0.5").

    pred, target: (N, 4) xyxy boxes, one predicted box per referring expression, best in pixels
    of the original image (as RefCOCO's evaluation compares them). Computed in float64: float32
    areas of a large image's boxes round, and an IoU of exactly 0.5 could then score as a miss.
    """
    pred, target = _check(pred, "pred"), _check(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")
    if pred.numel() == 0:
        raise ValueError("accuracy_at_iou needs at least one box pair")
    return (elementwise_box_iou(pred.double(), target.double()) >= threshold).double().mean().item()


__all__ = [
    "BOX_FORMATS",
    "accuracy_at_iou",
    "box_area",
    "box_convert",
    "box_iou",
    "cxcywh_to_xyxy",
    "elementwise_box_iou",
    "elementwise_generalized_box_iou",
    "generalized_box_iou",
    "giou_loss",
    "xywh_to_xyxy",
    "xyxy_to_cxcywh",
    "xyxy_to_xywh",
]
