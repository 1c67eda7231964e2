"""Connected components of a boolean mask and the box around them: the step from a segmentation
(a thresholded heat map, the saturated pixels of a generated image) to a box that box metrics score."""

from __future__ import annotations

from collections import deque

import numpy as np


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a boolean ``(H, W)`` mask (first found on ties)."""
    height, width = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    best: list[tuple[int, int]] = []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start] = True
        queue, component = deque([start]), []
        while queue:
            y, x = queue.popleft()
            component.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        if len(component) > len(best):
            best = component
    out = np.zeros_like(mask, dtype=bool)
    if best:
        ys, xs = zip(*best)
        out[list(ys), list(xs)] = True
    return out


def mask_to_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """The ``(x1, y1, x2, y2)`` pixel box around a non-empty mask (pixel ``i`` spans ``[i, i + 1)``)."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        raise ValueError("mask_to_box: the mask is empty")
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)
