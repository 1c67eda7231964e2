"""2-D position helpers for grid-shaped tokens (ViT patches, CNN grid cells).

- :func:`sincos_2d`: fixed 2-D sine-cosine embeddings ``(h*w, D)`` (MAE / MoCo v3 layout);
- :func:`grid_positions`: normalized ``(row, col)`` coordinates ``(h*w, 2)`` of each cell centre;
- :func:`resize_grid_embedding`: bicubic resampling of a learned ``(prefix + h*w, D)``
  grid of position embeddings to a new grid size, leaving prefix tokens ([CLS]) alone.

Tokens of a grid are always in row-major (raster) order: token ``r * w + c`` is cell ``(r, c)``,
which is what ``conv(x).flatten(2).transpose(1, 2)`` produces.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pair(size: int | tuple[int, int] | list[int], name: str = "size") -> tuple[int, int]:
    """``224 -> (224, 224)``; ``(h, w)`` stays; anything else is a clear error."""
    if isinstance(size, int) and not isinstance(size, bool):
        return size, size
    if isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(s, int) for s in size):
        return int(size[0]), int(size[1])
    raise ValueError(f"{name}: expected an int or a pair (height, width) of ints, got {size!r}")


def sincos_1d(positions: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Sine-cosine embedding of scalar positions: ``(N,) -> (N, dim)``.

    The first ``dim/2`` channels are ``sin(p * w_i)``, the rest ``cos(p * w_i)``, with
    frequencies ``w_i = temperature ** (-i / (dim/2))`` for ``i = 0 .. dim/2 - 1``.
    """
    if dim % 2:
        raise ValueError(f"sin-cos embedding dim must be even, got {dim}")
    exponent = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = temperature**-exponent
    angles = positions.to(torch.float64).reshape(-1, 1) * omega.reshape(1, -1)
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def sincos_2d(
    grid_size: int | tuple[int, int],
    dim: int,
    temperature: float = 10000.0,
    num_prefix_tokens: int = 0,
) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embeddings ``(num_prefix_tokens + h*w, dim)``.

    Follows MAE's ``get_2d_sincos_pos_embed``: the first ``dim/2`` channels are the
    1-D embedding of the column index ``c``, the last ``dim/2`` that of the row index
    ``r`` (integer cell indices, not normalized). Prefix tokens ([CLS]) get zeros.
    ``dim`` must be divisible by 4.
    """
    h, w = pair(grid_size, "grid_size")
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding dim must be divisible by 4, got {dim}")
    rows = torch.arange(h).repeat_interleave(w)  # r of token r*w + c
    cols = torch.arange(w).repeat(h)  # c of token r*w + c
    grid = torch.cat([sincos_1d(cols, dim // 2, temperature), sincos_1d(rows, dim // 2, temperature)], dim=1)
    if num_prefix_tokens:
        grid = torch.cat([torch.zeros(num_prefix_tokens, dim), grid], dim=0)
    return grid


def grid_positions(grid_size: int | tuple[int, int], device: torch.device | str | None = None) -> torch.Tensor:
    """Normalized ``(row, col)`` of every cell centre, ``(h*w, 2)`` in raster order.

    Cell ``(r, c)`` of an ``h x w`` grid is at ``((r + 0.5) / h, (c + 0.5) / w)``, so the
    values lie strictly inside (0, 1) and the same point of the image gets about the
    same coordinates whatever the resolution.
    """
    h, w = pair(grid_size, "grid_size")
    rows = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
    cols = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
    return torch.stack([rows.repeat_interleave(w), cols.repeat(h)], dim=1)


def resize_grid_embedding(
    embedding: torch.Tensor,
    old_grid: int | tuple[int, int],
    new_grid: int | tuple[int, int],
    num_prefix_tokens: int = 0,
    mode: str = "bicubic",
    antialias: bool = True,
) -> torch.Tensor:
    """Resample a grid of position embeddings to a new grid size.

    ``embedding`` is ``(prefix + h*w, D)`` or ``(1, prefix + h*w, D)`` in raster order;
    the result has the same layout with ``new_h * new_w`` grid rows. Prefix tokens are
    kept unchanged. The grid is reshaped to ``(1, D, h, w)`` and resized to the target
    ``size`` with ``F.interpolate(mode, align_corners=False, antialias)``.

    ``antialias=True`` is what timm's ``resample_abs_pos_embed`` and OpenCLIP do;
    ``antialias=False`` is transformers' ``interpolate_pos_encoding`` (CLIP, BLIP, ViT). The
    two differ when growing as well as when shrinking: PyTorch's antialiased bicubic uses
    another cubic kernel (a = -0.5, PIL's) than the plain one (a = -0.75). Same size
    returns the input unchanged.
    """
    old_h, old_w = pair(old_grid, "old_grid")
    new_h, new_w = pair(new_grid, "new_grid")
    batched = embedding.dim() == 3
    table = embedding[0] if batched else embedding
    if table.dim() != 2 or table.shape[0] != num_prefix_tokens + old_h * old_w:
        raise ValueError(
            f"position embedding of shape {tuple(embedding.shape)} does not hold {num_prefix_tokens} prefix tokens "
            f"+ a {old_h}x{old_w} grid"
        )
    if (old_h, old_w) == (new_h, new_w):
        return embedding
    prefix, grid = table[:num_prefix_tokens], table[num_prefix_tokens:]
    dim = grid.shape[1]
    # interpolate in fp32: bicubic is not implemented for every low-precision dtype on CPU
    image = grid.float().reshape(1, old_h, old_w, dim).permute(0, 3, 1, 2)
    smooth = mode in ("bilinear", "bicubic")
    image = F.interpolate(
        image, size=(new_h, new_w), mode=mode, align_corners=False if smooth else None, antialias=antialias and smooth
    )
    grid = image.permute(0, 2, 3, 1).reshape(new_h * new_w, dim).to(table.dtype)
    table = torch.cat([prefix, grid], dim=0)
    return table.unsqueeze(0) if batched else table


__all__ = ["grid_positions", "pair", "resize_grid_embedding", "sincos_1d", "sincos_2d"]
