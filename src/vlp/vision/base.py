"""What every visual encoder shares: the ``forward(batch_or_images)`` input rule.

Every encoder in :mod:`vlp.vision` is called as ``encoder(batch_or_images)`` and
returns :class:`vlp.core.outputs.VisualTokens` ``(B, N, D)`` tokens with a
``(B, N)`` boolean keep-mask (``True`` = real token). A ``Tensor`` argument is a
batch of images ``(B, 3, H, W)``; a :class:`vlp.data.batch.Batch` is read for the
fields the encoder needs (``images``, or the ``region_*`` fields).
"""

from __future__ import annotations

import torch
from torch import nn

from vlp.core.outputs import VisualTokens
from vlp.data.batch import Batch

# position given to prefix tokens ([CLS], pooled) that have no place on the image grid
PREFIX_POSITION = -1.0


def images_of(batch_or_images: Batch | torch.Tensor, who: str, channels: int = 3) -> torch.Tensor:
    """The ``(B, C, H, W)`` image tensor of a ``Batch`` or a bare tensor, validated."""
    if isinstance(batch_or_images, Batch):
        images = batch_or_images.images
        if images is None:
            raise ValueError(f"{who}: the batch has no images (Batch.images is None)")
    elif isinstance(batch_or_images, torch.Tensor):
        images = batch_or_images
    else:
        raise TypeError(
            f"{who}: expected a Batch or an image tensor (B, C, H, W), got {type(batch_or_images).__name__}"
        )
    if images.dim() != 4 or images.shape[1] != channels:
        raise ValueError(f"{who}: images must be (B, {channels}, H, W), got shape {tuple(images.shape)}")
    return images


def grid_token_positions(
    positions: torch.Tensor, batch: int, num_prefix_tokens: int = 0, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Per-batch positions ``(B, prefix + h*w, 2)``: prefix tokens at ``(-1, -1)``, then ``positions``."""
    if num_prefix_tokens:
        prefix = positions.new_full((num_prefix_tokens, positions.shape[1]), PREFIX_POSITION)
        positions = torch.cat([prefix, positions], dim=0)
    if dtype is not None:
        positions = positions.to(dtype)
    return positions.unsqueeze(0).expand(batch, -1, -1)


class VisualEncoder(nn.Module):
    """Base class: ``forward(batch_or_images) -> VisualTokens``; ``dim`` is the token width D.

    ``num_prefix_tokens`` counts the leading tokens that summarize the whole image
    ([CLS] of a ViT, the attention-pooled token of CLIP's ResNet) rather than one place.
    """

    dim: int
    num_prefix_tokens: int = 0

    def forward(self, batch_or_images: Batch | torch.Tensor) -> VisualTokens:  # pragma: no cover - abstract
        raise NotImplementedError


__all__ = ["PREFIX_POSITION", "VisualEncoder", "grid_token_positions", "images_of"]
