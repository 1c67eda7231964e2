"""Scores for generated images: layout IoU by colour segmentation, and CLIP-score with a vlp dual encoder.

Layout IoU: ShapesWorld objects are saturated palette colours on low-saturation
backgrounds (see :mod:`vlp.data.shapesworld.vocab`), so an object's pixels are
those whose channel spread ``max(r, g, b) - min(r, g, b)`` stands out from the
image's typical (median) spread by a margin. Measuring against the median, not
zero, keeps a generated image whose whole background drifted to a saturated tint
from being taken for one huge object. The object's box is the bounding box of the
largest 4-connected set of such pixels; the score is its IoU with the layout box.

CLIP-score (Hessel et al., 2021): ``100 * max(cos(image_emb, text_emb), 0)``
averaged over images, for any model with ``encode_image`` / ``encode_text``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vlp.data.config import CLIP_MEAN, CLIP_STD
from vlp.metrics.masks import largest_component, mask_to_box

# margin of channel spread over the image's median spread that marks an object pixel: the least
# saturated palette colour (green, 160 - 40 = 120) clears it on any real background (grey +- 18
# tint, noise sigma <= 6, so a median spread of at most ~40)
SATURATION_THRESHOLD = 50


def object_mask(image: np.ndarray, threshold: int = SATURATION_THRESHOLD) -> np.ndarray:
    """``(H, W)`` bool: pixels of uint8 RGB ``image (H, W, 3)`` whose channel spread exceeds the image's median
    spread by more than ``threshold`` (objects cover a small part of a ShapesWorld image, so the median is the
    background's)."""
    pixels = image.astype(np.int16)
    spread = pixels.max(axis=-1) - pixels.min(axis=-1)
    return spread - np.median(spread) > threshold


def object_box(image: np.ndarray, threshold: int = SATURATION_THRESHOLD) -> tuple[int, int, int, int] | None:
    """Pixel box ``(c0, r0, c1, r1)`` (end-exclusive) of the largest saturated blob, or None when there is none."""
    blob = largest_component(object_mask(image, threshold))
    if not blob.any():
        return None
    return tuple(int(v) for v in mask_to_box(blob))


def box_iou(a: tuple[int, int, int, int] | None, b: tuple[int, int, int, int] | None) -> float:
    """IoU of two end-exclusive pixel boxes ``(c0, r0, c1, r1)``; a missing box scores 0."""
    if a is None or b is None:
        return 0.0
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def dual_encoder_inputs(model: Any) -> tuple[int, tuple[float, ...], tuple[float, ...], int]:
    """``(image_size, mean, std, max_text_len)`` the dual encoder was trained with (from its recipe, else CLIP's)."""
    recipe = getattr(model, "recipe", None)
    data = getattr(recipe, "data", None)
    vision = getattr(getattr(model, "cfg", None), "vision", None)
    size = getattr(vision, "image_size", None) or getattr(data, "image_size", 224)
    transform = getattr(data, "transform", None)
    mean = tuple(getattr(transform, "mean", CLIP_MEAN))
    std = tuple(getattr(transform, "std", CLIP_STD))
    return int(size), mean, std, int(getattr(data, "max_text_len", 40))


@torch.no_grad()
def clip_scores(
    model: Any, tokenizer: Any, images: torch.Tensor, texts: list[str], batch_size: int = 128
) -> torch.Tensor:
    """Per-image CLIP-score ``(N,)``: ``100 * max(cos(encode_image(x), encode_text(t)), 0)``.

    ``images`` ``(N, 3, H, W)`` in [-1, 1] are resized (bicubic) to the dual encoder's input size
    and normalized with its recipe's mean / std.
    """
    if images.shape[0] != len(texts):
        raise ValueError(f"{images.shape[0]} images but {len(texts)} texts")
    model.eval()
    size, mean, std, max_len = dual_encoder_inputs(model)
    device = next(model.parameters()).device
    mean_t = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, 3, 1, 1)
    scores = []
    for start in range(0, len(texts), batch_size):
        x = (images[start : start + batch_size].to(device).float() + 1) / 2
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
        tokens = tokenizer(texts[start : start + batch_size], max_length=max_len).to(device)
        image_emb = F.normalize(model.encode_image((x - mean_t) / std_t), dim=-1)
        text_emb = F.normalize(model.encode_text(tokens.input_ids, tokens.attention_mask), dim=-1)
        scores.append(100.0 * (image_emb * text_emb).sum(-1).clamp_min(0))
    return torch.cat(scores).cpu()


__all__ = [
    "SATURATION_THRESHOLD",
    "box_iou",
    "clip_scores",
    "dual_encoder_inputs",
    "object_box",
    "object_mask",
]
