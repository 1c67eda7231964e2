"""A user's inputs to referring-expression inference -> a batch: region files or dicts, and candidate
boxes in pixels mapped into the model's view."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlp.data.batch import Batch
from vlp.data.collate import collate, pad_sample_regions
from vlp.data.sources.regions import RegionError, load_regions


def region_batch(regions: list[Any], sizes: list[tuple[int, int] | None]) -> tuple[Batch, list[tuple[float, float]]]:
    """Region files / ``{"features" (R, F), "boxes" (R, 4) pixels}`` dicts -> padded Batch + image sizes."""
    samples, out_sizes = [], []
    for i, (item, size) in enumerate(zip(regions, sizes)):
        if isinstance(item, (str, Path)):
            try:
                loaded = load_regions(item)
                with np.load(item, allow_pickle=False) as npz:
                    size = size or (float(npz["image_w"]), float(npz["image_h"]))
            except (RegionError, KeyError) as err:
                raise ValueError(f"regions[{i}]: {err}") from err
            features, boxes = torch.from_numpy(loaded["features"]), torch.from_numpy(loaded["boxes"])
        elif isinstance(item, dict) and "features" in item and "boxes" in item and size is not None:
            features = torch.as_tensor(np.asarray(item["features"]), dtype=torch.float32)
            boxes = (torch.as_tensor(np.asarray(item["boxes"]), dtype=torch.float32) / torch.tensor(size * 2)).clamp(
                0, 1
            )
        else:
            raise TypeError(f"regions[{i}]: expected a region .npz path, or a dict with 'features' and 'boxes' "
                            "(pixels) next to its image")  # fmt: skip
        if features.ndim != 2 or boxes.shape != (features.shape[0], 4):
            raise ValueError(f"regions[{i}]: features (R, F) and boxes (R, 4) do not match")
        samples.append({"region_features": features, "region_boxes": boxes.float(), "meta": {}})
        out_sizes.append(size)
    return collate(samples), out_sizes


def pixels_to_view_box(box: Any, view: Any) -> list[float]:
    """A pixel xyxy box of the original image -> normalized xyxy in the model's ``view`` of it (xyxy
    pixels of the part it saw), clipped to it (the inverse of :func:`vlp.metrics.refexp.view_box_to_pixels`)."""
    left, top, right, bottom = (float(v) for v in view)
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = right - left, bottom - top
    out = [(x1 - left) / w, (y1 - top) / h, (x2 - left) / w, (y2 - top) / h]
    return [min(1.0, max(0.0, v)) for v in out]


def candidate_boxes(candidates: list[Any], views: list[Any]) -> tuple[torch.Tensor, ...]:
    """Per-image ``(R_i, 4)`` pixel boxes -> padded normalized ``(B, R, 4)`` boxes in each image's ``view``
    (xyxy pixels of the part the model saw) and keep-mask ``(B, R)``."""
    samples = []
    for i, (boxes, view) in enumerate(zip(candidates, views)):
        array = np.asarray(boxes, dtype=np.float64)
        if array.ndim != 2 or array.shape[1] != 4 or not len(array):
            raise ValueError(
                f"candidates[{i}]: expected a non-empty (R, 4) list of xyxy pixel boxes, got {boxes!r:.80}"
            )
        samples.append({"region_boxes": torch.tensor([pixels_to_view_box(b, view) for b in array.tolist()])})
    padded = pad_sample_regions(samples)
    return padded["region_boxes"], padded["region_mask"]


__all__ = ["candidate_boxes", "pixels_to_view_box", "region_batch"]
