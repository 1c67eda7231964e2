"""The perception head: dense patch features projected into the joint space, their cosine similarity with
a text query as an ``(h, w)`` heat map, upsampled to the image, and the decode from heat map to mask
(Otsu's or a mean + k std threshold) and box (the mask's largest 4-connected component)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vlp.config import ConfigError
from vlp.metrics.masks import largest_component, mask_to_box
from vlp.tasks.common import has_dual


def check_dense(model: Any) -> None:
    """Dense features need a patch encoder with layers and a dual-encoder projection (not MoME)."""
    if not has_dual(model):
        raise ConfigError("zero-shot perception needs a dual-encoder side (model.embed_dim > 0, e.g. CLIP)")
    if not hasattr(model.vision, "dense_features") or getattr(model.vision, "transformer", None) is None:
        raise ConfigError("zero-shot perception needs a patch (ViT) image encoder with transformer layers")
    if model.towers_in_fusion:
        raise ConfigError("zero-shot perception: MoME models (VLMo) embed images through the fusion experts")


def dense_similarity(model: Any, images: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every patch with a text: images ``(B, 3, H, W)``, text_embeds ``(B, E)``
    (one normalized query per image) -> ``(B, h, w)``."""
    check_dense(model)
    features, (h, w) = model.vision.dense_features(images)
    patches = F.normalize(model.image_proj(features), dim=-1)  # (B, h*w, E)
    sim = torch.einsum("bne,be->bn", patches, F.normalize(text_embeds.to(patches.dtype), dim=-1))
    return sim.view(-1, h, w)


def heat_to_image(heat: np.ndarray, width: int, height: int, view: Any = None) -> np.ndarray:
    """Bilinear upsampling of an ``(h, w)`` map to the ``(height, width)`` original image.

    ``view``: the part of the image the model saw, xyxy pixels (default: all of it, the image was
    squashed); the map covers that window (rounded to whole pixels) and outside it holds its minimum.
    """
    grid = torch.as_tensor(np.asarray(heat, dtype=np.float32))[None, None]
    left, top, right, bottom = (round(float(v)) for v in (view or (0, 0, width, height)))
    inner = F.interpolate(grid, size=(bottom - top, right - left), mode="bilinear", align_corners=False)[0, 0].numpy()
    if (left, top, right, bottom) == (0, 0, width, height):
        return inner
    out = np.full((height, width), inner.min(), dtype=np.float32)
    out[top:bottom, left:right] = inner
    return out


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the cut of a ``bins``-bin histogram that maximizes between-class variance."""
    values = np.asarray(values, dtype=np.float64).ravel()
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return lo
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(counts)[:-1].astype(np.float64)  # pixels at or below each candidate cut
    w1 = values.size - w0
    sums = np.cumsum(counts * centres)[:-1]
    mu0 = sums / np.maximum(w0, 1)
    mu1 = (sums[-1] + counts[-1] * centres[-1] - sums) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[1:][:-1][int(np.argmax(between))])


def threshold_mask(heat: np.ndarray, method: str = "otsu", k: float = 1.0) -> np.ndarray:
    """Boolean mask of ``heat > t``: ``otsu``, or ``std`` with ``t = mean + k * std``."""
    if method == "otsu":
        t = otsu_threshold(heat)
    elif method == "std":
        t = float(heat.mean() + k * heat.std())
    else:
        raise ConfigError(f"threshold: {method!r} is not one of otsu, std")
    mask = heat > t
    if not mask.any():  # a flat map: keep its peak so there is always a box
        mask = heat >= heat.max()
    return mask


def heat_box(heat: np.ndarray, method: str = "otsu", k: float = 1.0) -> tuple[tuple[float, ...], np.ndarray]:
    """``(box, mask)``: the threshold mask's largest component and its bounding box."""
    mask = largest_component(threshold_mask(heat, method, k))
    return mask_to_box(mask), mask
