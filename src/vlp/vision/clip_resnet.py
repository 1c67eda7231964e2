"""CLIP's ModifiedResNet image tower, type ``"resnet_clip"``.

Differences from a torchvision ResNet (CLIP paper, section 2.4): a 3-conv stem with
an average pool instead of max pool, anti-aliased strided blocks (the stride is an
``AvgPool2d`` before the last 1x1 conv, and on the shortcut before its 1x1 conv),
and an attention pool in place of global average pooling: the mean cell is the
query of a multi-head attention over all cells plus learned positions.

Parameter names mirror OpenCLIP's ``ModifiedResNet`` (``conv1..3``/``bn1..3``,
``layer1..4`` of ``Bottleneck`` with ``downsample.{-1,0,1}``, ``attnpool`` with
``positional_embedding`` and ``q_proj``/``k_proj``/``v_proj``/``c_proj``), so an
OpenCLIP ``visual.`` state dict loads as is.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from vlp.config import ConfigError, part
from vlp.core.outputs import VisualTokens
from vlp.data.batch import Batch
from vlp.layers.positions import grid_positions, resize_grid_embedding
from vlp.vision.base import VisualEncoder, grid_token_positions, images_of
from vlp.vision.config import VisionConfig


@dataclass
class ClipResNetConfig(VisionConfig):
    """RN50 is ``layers [3, 4, 6, 3], width 64, dim 1024``; ``heads: 0`` means ``width * 32 / 64``."""

    type: str = "resnet_clip"
    image_size: int = 224
    layers: list[int] = field(default_factory=lambda: [3, 4, 6, 3])
    width: int = 64
    heads: int = 0
    dim: int = 1024  # output width of the attention pool (CLIP's embed_dim)

    def __post_init__(self) -> None:
        if len(self.layers) != 4 or any(n < 1 for n in self.layers):
            raise ConfigError(f"resnet_clip.layers: expected 4 positive stage depths, got {self.layers}")
        if self.image_size % 32:
            raise ConfigError(f"resnet_clip.image_size {self.image_size} must be a multiple of 32")
        if self.width % 2:
            raise ConfigError(f"resnet_clip.width must be even (the stem starts at width / 2), got {self.width}")
        heads = self.heads or self.width * 32 // 64
        if heads < 1 or (self.width * 32) % heads:
            raise ConfigError(f"resnet_clip.heads {heads} must divide the pooled width {self.width * 32}")


class Bottleneck(nn.Module):
    """Bottleneck whose stride is an average pool (OpenCLIP layout)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.act3 = nn.ReLU(inplace=True)
        self.downsample = None
        if stride > 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(
                OrderedDict(
                    [
                        ("-1", nn.AvgPool2d(stride)),
                        ("0", nn.Conv2d(inplanes, planes * 4, 1, bias=False)),
                        ("1", nn.BatchNorm2d(planes * 4)),
                    ]
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        return self.act3(out + identity)


class AttentionPool2d(nn.Module):
    """Attention pooling of a feature map: ``(B, C, h, w) -> (B, 1 + h*w, out_dim)``.

    Token 0 is CLIP's pooled image feature (the query is the mean cell); the other
    tokens are the same attention evaluated with each cell as the query, which gives
    dense features in the pooled embedding space. ``positional_embedding`` is
    ``(1 + s*s, C)`` for an ``s x s`` map and is bicubic-resized for other sizes.
    """

    def __init__(self, spatial_dim: int, embed_dim: int, heads: int, output_dim: int) -> None:
        super().__init__()
        self.spatial_dim = spatial_dim
        self.heads = heads
        self.positional_embedding = nn.Parameter(torch.randn(spatial_dim**2 + 1, embed_dim) / embed_dim**0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)  # (B, h*w, C)
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)
        pos = resize_grid_embedding(self.positional_embedding, self.spatial_dim, (h, w), num_prefix_tokens=1)
        x = x + pos.to(x.dtype)

        def heads(t: torch.Tensor) -> torch.Tensor:  # (B, N, C) -> (B, heads, N, C / heads)
            return t.view(batch, -1, self.heads, channels // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x)))
        return self.c_proj(out.transpose(1, 2).reshape(batch, -1, channels))


class ClipResNetEncoder(VisualEncoder):
    """CLIP ModifiedResNet: ``forward(batch_or_images (B, 3, H, W)) -> VisualTokens``.

    Returns tokens ``(B, 1 + h*w, dim)`` batch-first (``h = H / 32``): token 0 is the
    attention-pooled image feature (what CLIP projects into the joint space), then the
    grid cells in raster order. The keep-mask ``(B, N)`` is all ``True``; positions
    ``(B, N, 2)`` are ``(-1, -1)`` for the pooled token and the normalized ``(row, col)``
    cell centres for the rest.
    """

    def __init__(self, config: ClipResNetConfig) -> None:
        super().__init__()
        self.config = config
        self.dim = config.dim
        self.num_prefix_tokens = 1  # the attention-pooled token
        width = config.width
        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.act3 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(2)
        self._inplanes = width
        self.layer1 = self._make_layer(width, config.layers[0])
        self.layer2 = self._make_layer(width * 2, config.layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, config.layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, config.layers[3], stride=2)
        embed_dim = width * 32
        self.attnpool = AttentionPool2d(
            config.image_size // 32, embed_dim, config.heads or width * 32 // 64, config.dim
        )
        self._init_weights()

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        layers = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self._inplanes, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        # as OpenCLIP: attention-pool projections ~ N(0, C^-1/2); the last BN of each block
        # starts at zero so that every residual block begins as the identity
        std = self.attnpool.c_proj.in_features**-0.5
        for proj in (self.attnpool.q_proj, self.attnpool.k_proj, self.attnpool.v_proj, self.attnpool.c_proj):
            nn.init.normal_(proj.weight, std=std)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                nn.init.zeros_(block.bn3.weight)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """The feature map before attention pooling: ``(B, 3, H, W) -> (B, 32 * width, H / 32, W / 32)``."""
        x = self.act1(self.bn1(self.conv1(images)))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.avgpool(self.act3(self.bn3(self.conv3(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, batch_or_images: Batch | torch.Tensor) -> VisualTokens:
        images = images_of(batch_or_images, "resnet_clip encoder")
        features = self.forward_features(images)
        grid = (features.shape[2], features.shape[3])
        tokens = self.attnpool(features)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        positions = grid_token_positions(grid_positions(grid, tokens.device), tokens.shape[0], num_prefix_tokens=1)
        return VisualTokens(tokens=tokens, mask=mask, positions=positions)


part(VisionConfig, "resnet_clip", ClipResNetEncoder)(ClipResNetConfig)

__all__ = ["AttentionPool2d", "ClipResNetConfig", "ClipResNetEncoder"]
