"""Image files for generation: sample grids out, control maps in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def make_grid(images: np.ndarray, rows: int, pad: int = 2, fill: int = 255) -> np.ndarray:
    """Tile uint8 ``(N, H, W, 3)`` images row-major into ``rows`` rows with ``pad`` pixels of ``fill`` between.

    The result is ``(rows * (H + pad) + pad, cols * (W + pad) + pad, 3)`` with ``cols = N / rows``.
    """
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images: expected uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    n, h, w, _ = images.shape
    if rows < 1 or n % rows:
        raise ValueError(f"{n} images do not fill {rows} rows evenly")
    cols = n // rows
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), fill, dtype=np.uint8)
    for k in range(n):
        r, c = divmod(k, cols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        grid[y : y + h, x : x + w] = images[k]
    return grid


def save_grid(images: np.ndarray, rows: int, path: str | Path, scale: int = 1, pad: int = 2) -> Path:
    """Write :func:`make_grid` as a PNG, each pixel repeated ``scale`` times (nearest) so tiny images stay visible."""
    grid = make_grid(images, rows, pad)
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path, format="PNG")
    return path


def read_control_map(path: str | Path, size: int) -> torch.Tensor:
    """A control map image file -> ``(1, 3, size, size)`` float in [0, 1] (resized with nearest, keeping hard edges)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: control map not found")
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.NEAREST)
            pixels = np.asarray(img, dtype=np.float32) / 255.0
    except OSError as err:
        raise ValueError(f"{path}: not a readable image ({err}); expected a PNG/JPEG control map") from err
    return torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0).contiguous()


__all__ = ["make_grid", "read_control_map", "save_grid"]
