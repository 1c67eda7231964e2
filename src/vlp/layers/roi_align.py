"""ROIAlign in pure torch, with the semantics of ``torchvision.ops.roi_align``.

Each box is split into ``output_size`` bins; each bin averages ``gh x gw`` bilinear
samples placed at the centres of a regular sub-grid of the bin. With
``aligned=True`` a box pixel coordinate ``x`` maps to the continuous feature
coordinate ``x * spatial_scale - 0.5`` (pixel centres at integer + 0.5, as in
Detectron2). Samples further than one cell outside the map count as 0; samples
between -1 and 0 (or the last cell and the border) read the edge value.

All boxes are sampled with one ``F.grid_sample`` call: every box's sample points
are packed into a ``(B, max boxes per image, samples, 2)`` grid, so the cost does
not grow with a Python loop over boxes. Gradients flow to ``features`` (not to
the boxes, like torchvision).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlp.layers.positions import pair


def boxes_to_rois(boxes: torch.Tensor | list[torch.Tensor] | tuple[torch.Tensor, ...], batch_size: int) -> torch.Tensor:
    """``list[Tensor(R_i, 4)]`` (one per image) or ``Tensor(K, 5)`` -> ``Tensor(K, 5)``.

    Column 0 of the result is the image index, columns 1-4 the box ``(x1, y1, x2, y2)``.
    """
    if isinstance(boxes, (list, tuple)):
        if len(boxes) != batch_size:
            raise ValueError(f"roi_align: got box lists for {len(boxes)} images but features hold {batch_size}")
        rois = []
        for i, b in enumerate(boxes):
            if not isinstance(b, torch.Tensor) or b.dim() != 2 or b.shape[1] != 4:
                shape = tuple(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__
                raise ValueError(f"roi_align: boxes[{i}] must be a (R, 4) tensor of x1, y1, x2, y2; got {shape}")
            index = torch.full((b.shape[0], 1), float(i), dtype=b.dtype, device=b.device)
            rois.append(torch.cat([index, b], dim=1))
        if not rois:
            raise ValueError("roi_align: empty list of boxes")
        return torch.cat(rois, dim=0)
    if not isinstance(boxes, torch.Tensor) or boxes.dim() != 2 or boxes.shape[1] != 5:
        shape = tuple(boxes.shape) if isinstance(boxes, torch.Tensor) else type(boxes).__name__
        raise ValueError(
            f"roi_align: boxes must be a list of (R_i, 4) tensors or a (K, 5) tensor (image index, x1, y1, x2, y2); "
            f"got {shape}"
        )
    return boxes


def _axis_samples(
    start: torch.Tensor, length: torch.Tensor, bins: int, grid: torch.Tensor, max_grid: int, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample coordinates along one axis and their weights, both ``(K, bins, max_grid)``.

    The coordinates are clamped to ``[0, size - 1]`` and normalized to ``[-1, 1]`` for
    ``grid_sample(align_corners=True)``. The weight of a sample is ``1 / grid`` when it
    is one of the box's ``grid`` samples per bin and lies within one cell of the map,
    else 0; the product of the two axes' weights is torchvision's ``1 / count``.
    """
    bin_size = (length / bins)[:, None, None]
    safe_grid = grid.clamp_min(1).to(start.dtype)[:, None, None]
    index = torch.arange(bins, device=start.device, dtype=start.dtype)[None, :, None]
    sub = torch.arange(max_grid, device=start.device, dtype=start.dtype)[None, None, :]
    coord = start[:, None, None] + index * bin_size + (sub + 0.5) * bin_size / safe_grid
    used = (sub < grid[:, None, None]) & (coord >= -1.0) & (coord <= size)
    weight = used.to(start.dtype) / safe_grid
    clamped = coord.clamp(0.0, size - 1.0)
    normalized = clamped * (2.0 / (size - 1)) - 1.0 if size > 1 else torch.zeros_like(clamped)
    return normalized, weight


def roi_align(
    features: torch.Tensor,
    boxes: torch.Tensor | list[torch.Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = True,
) -> torch.Tensor:
    """Pool a ``(ph, pw)`` feature grid from each box: ``(B, C, H, W) -> (K, C, ph, pw)``.

    Args:
        features: feature maps ``(B, C, H, W)``.
        boxes: ``list[Tensor(R_i, 4)]`` of ``(x1, y1, x2, y2)`` per image, or ``Tensor(K, 5)``
            whose first column is the image index. Coordinates are in input-image pixels.
        output_size: bins per box, ``int`` or ``(ph, pw)``.
        spatial_scale: feature cells per input pixel (``1 / stride``).
        sampling_ratio: samples per bin along each axis; ``<= 0`` means adaptive,
            ``ceil(box size / bins)`` per box and axis.
        aligned: shift by half a pixel so that box corners fall on pixel edges
            (torchvision ``aligned=True``); ``False`` is the legacy behaviour, where
            boxes are also at least one cell wide.

    Returns:
        ``(K, C, ph, pw)`` in the order of the boxes (list order: image by image).
    """
    if features.dim() != 4:
        raise ValueError(f"roi_align: features must be (B, C, H, W), got shape {tuple(features.shape)}")
    batch, channels, height, width = features.shape
    ph, pw = pair(output_size, "roi_align output_size")
    rois = boxes_to_rois(boxes, batch).detach()
    count = rois.shape[0]
    if count == 0:
        return features.new_zeros(0, channels, ph, pw)
    # coordinates in fp32 at least: bf16 cannot place a sample to a fraction of a cell
    work = features.float() if features.dtype in (torch.float16, torch.bfloat16) else features
    rois = rois.to(device=features.device, dtype=work.dtype)
    image = rois[:, 0].round().long()
    if bool(((image < 0) | (image >= batch)).any()):
        raise ValueError(f"roi_align: box image indices must lie in [0, {batch - 1}], got {image.unique().tolist()}")

    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (rois[:, 1:] * spatial_scale - offset).unbind(dim=1)
    box_w, box_h = x2 - x1, y2 - y1
    if not aligned:  # legacy: force malformed boxes to be 1x1
        box_w, box_h = box_w.clamp_min(1.0), box_h.clamp_min(1.0)
    if sampling_ratio > 0:
        grid_h = grid_w = torch.full((count,), sampling_ratio, dtype=torch.long, device=features.device)
    else:
        grid_h = torch.ceil(box_h / ph).clamp_min(0).long()
        grid_w = torch.ceil(box_w / pw).clamp_min(0).long()
    max_h, max_w = max(int(grid_h.max()), 1), max(int(grid_w.max()), 1)

    gy, wy = _axis_samples(y1, box_h, ph, grid_h, max_h, height)  # (K, ph, max_h)
    gx, wx = _axis_samples(x1, box_w, pw, grid_w, max_w, width)  # (K, pw, max_w)
    shape = (count, ph, max_h, pw, max_w)
    grid = torch.stack([gx[:, None, None].expand(shape), gy[:, :, :, None, None].expand(shape)], dim=-1)
    samples = ph * max_h * pw * max_w

    # slot of each box among the boxes of its image, to pack them as (B, slots, samples, 2)
    order = torch.argsort(image, stable=True)
    sorted_image = image[order]
    slot = torch.empty_like(image)
    slot[order] = torch.arange(count, device=image.device) - torch.searchsorted(sorted_image, sorted_image)
    packed = grid.new_zeros(batch, int(slot.max()) + 1, samples, 2)
    packed[image, slot] = grid.reshape(count, samples, 2)
    sampled = F.grid_sample(work, packed, mode="bilinear", padding_mode="border", align_corners=True)
    values = sampled[image, :, slot].reshape(count, channels, ph, max_h, pw, max_w)  # (K, C, ...)

    weights = wy[:, :, :, None, None] * wx[:, None, None, :, :]  # (K, ph, max_h, pw, max_w)
    pooled = torch.einsum("kcpiqj,kpiqj->kcpq", values, weights)
    return pooled.to(features.dtype)


__all__ = ["boxes_to_rois", "roi_align"]
