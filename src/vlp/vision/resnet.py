"""A torchvision-layout ResNet backbone (basic or bottleneck blocks), in pure torch.

Used end to end by the grid encoder (Pixel-BERT, SOHO) and as the feature map
for ROIAlign-pooled regions. Parameter names match ``torchvision.models.resnet``
(``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.downsample.0``, ...) so that an
ImageNet checkpoint loads with ``strict=False`` (only ``fc`` is missing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from vlp.config import ConfigError


@dataclass
class ResNetConfig:
    """Stem conv7x7/2 + maxpool/2, then one stage per entry of ``depths``.

    Stage ``i`` has ``depths[i]`` blocks of width ``widths[i]`` (bottleneck blocks
    output ``4 * width`` channels); every stage after the first halves the resolution.
    ResNet-18 is basic [2, 2, 2, 2], ResNet-50 bottleneck [3, 4, 6, 3].
    """

    block: Literal["basic", "bottleneck"] = "basic"
    depths: list[int] = field(default_factory=lambda: [2, 2, 2, 2])
    widths: list[int] = field(default_factory=lambda: [64, 128, 256, 512])
    stem_width: int = 64
    in_channels: int = 3
    frozen_bn: bool = False  # keep BatchNorm statistics and affine weights fixed (small-batch fine-tuning)

    def __post_init__(self) -> None:
        if not self.depths or len(self.depths) != len(self.widths):
            raise ConfigError(
                f"backbone.depths {self.depths} and backbone.widths {self.widths} must be non-empty and equally long"
            )
        if any(d < 1 for d in self.depths) or any(w < 1 for w in self.widths) or self.stem_width < 1:
            raise ConfigError(f"backbone depths/widths must be positive, got {self.depths} / {self.widths}")

    @property
    def out_channels(self) -> int:
        return self.widths[-1] * (4 if self.block == "bottleneck" else 1)

    @property
    def stride(self) -> int:
        return 4 * 2 ** (len(self.depths) - 1)

    def grid_size(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        """Feature-map size for an image size: each stride-2 step maps ``n -> ceil(n / 2)``."""
        steps = 2 + len(self.depths) - 1
        h, w = image_hw
        for _ in range(steps):
            h, w = (h + 1) // 2, (w + 1) // 2
        return h, w


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection(inplanes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck: the stride sits on the 3x3 conv."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection(inplanes, planes * 4, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _projection(inplanes: int, planes: int, stride: int) -> nn.Sequential | None:
    """1x1 strided conv + BN on the shortcut when the shape changes (torchvision's ``downsample``)."""
    if stride == 1 and inplanes == planes:
        return None
    return nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))


class ResNet(nn.Module):
    """``forward(images (B, C_in, H, W)) -> feature map (B, out_channels, h, w)``, ``h = ceil(H / stride)``."""

    def __init__(self, config: ResNetConfig) -> None:
        super().__init__()
        self.config = config
        block = Bottleneck if config.block == "bottleneck" else BasicBlock
        self.conv1 = nn.Conv2d(config.in_channels, config.stem_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(config.stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = config.stem_width
        self.stages = []
        for i, (depth, width) in enumerate(zip(config.depths, config.widths)):
            blocks = []
            for j in range(depth):
                blocks.append(block(inplanes, width, stride=2 if (i > 0 and j == 0) else 1))
                inplanes = width * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            self.stages.append(f"layer{i + 1}")
        self.out_channels = inplanes
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if config.frozen_bn:
            for module in self.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.requires_grad_(False)

    def train(self, mode: bool = True) -> ResNet:
        super().train(mode)
        if self.config.frozen_bn:  # frozen statistics: BN always normalizes with its running estimates
            for module in self.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        for name in self.stages:
            x = getattr(self, name)(x)
        return x


__all__ = ["BasicBlock", "Bottleneck", "ResNet", "ResNetConfig"]
