"""Grid visual encoder, type ``"grid"``: CNN feature-map cells as tokens (Pixel-BERT, SOHO).

A ResNet (trained end to end) turns ``(B, 3, H, W)`` images into a ``(B, C, h, w)``
feature map; each cell is projected to ``dim`` and becomes one token, with a learned
or sin-cos 2-D position embedding added. Pixel-BERT's random pixel sampling keeps
``sample_pixels`` random cells per image during training (all cells at eval), which
both regularizes and cuts the cost of the fusion transformer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from vlp.config import ConfigError, part
from vlp.core.outputs import VisualTokens
from vlp.data.batch import Batch
from vlp.layers.positions import grid_positions, pair, resize_grid_embedding, sincos_2d
from vlp.vision.base import VisualEncoder, grid_token_positions, images_of
from vlp.vision.config import VisionConfig
from vlp.vision.resnet import ResNet, ResNetConfig


@dataclass
class GridConfig(VisionConfig):
    """ResNet grid features. ``sample_pixels: 0`` keeps every cell (Pixel-BERT uses 100)."""

    type: str = "grid"
    image_size: int | tuple[int, int] = 224
    backbone: ResNetConfig = field(default_factory=ResNetConfig)
    dim: int = 768
    pos: Literal["learned", "sincos", "none"] = "learned"
    norm: bool = True  # LayerNorm on the tokens after projection + positions
    eps: float = 1e-6
    dropout: float = 0.0
    sample_pixels: int = 0

    def __post_init__(self) -> None:
        pair(self.image_size, "grid.image_size")
        if self.sample_pixels < 0:
            raise ConfigError(f"grid.sample_pixels: expected >= 0 (0 = keep all), got {self.sample_pixels}")
        if self.pos == "sincos" and self.dim % 4:
            raise ConfigError(f"grid.dim {self.dim} must be divisible by 4 for pos: sincos")


def sample_tokens(tokens: torch.Tensor, positions: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep ``keep`` random tokens per row, in raster order: ``(B, N, D), (B, N, P) -> (B, keep, ·)``."""
    batch, count = tokens.shape[:2]
    index = torch.rand(batch, count, device=tokens.device).argsort(dim=1)[:, :keep].sort(dim=1).values

    def take(t: torch.Tensor) -> torch.Tensor:
        return t.gather(1, index.unsqueeze(-1).expand(-1, -1, t.shape[-1]))

    return take(tokens), take(positions)


class GridEncoder(VisualEncoder):
    """CNN grid encoder: ``forward(batch_or_images (B, 3, H, W)) -> VisualTokens``.

    Returns tokens ``(B, h*w, D)`` (or ``(B, sample_pixels, D)`` in training when
    sampling), batch-first, in raster order of the feature map; an all-``True``
    keep-mask ``(B, N)``; and positions ``(B, N, 2)``, the normalized ``(row, col)``
    centre of each cell (:func:`vlp.layers.positions.grid_positions`).
    """

    def __init__(self, config: GridConfig) -> None:
        super().__init__()
        self.config = config
        self.dim = config.dim
        self.backbone = ResNet(config.backbone)
        self.grid_size = config.backbone.grid_size(pair(config.image_size))
        self.proj = nn.Linear(self.backbone.out_channels, config.dim)
        h, w = self.grid_size
        if config.pos == "learned":
            self.pos_embed = nn.Parameter(nn.init.trunc_normal_(torch.zeros(1, h * w, config.dim), std=0.02))
        elif config.pos == "sincos":
            self.register_buffer("pos_embed", sincos_2d(self.grid_size, config.dim).unsqueeze(0), persistent=False)
        else:
            self.pos_embed = None
        self.norm = nn.LayerNorm(config.dim, eps=config.eps) if config.norm else nn.Identity()
        self.dropout = nn.Dropout(config.dropout)

    def position_embedding(self, grid: tuple[int, int]) -> torch.Tensor | None:
        """``(1, h*w, D)`` position embeddings for an ``h x w`` feature map (None for ``pos: none``)."""
        if self.pos_embed is None or grid == self.grid_size:
            return self.pos_embed
        if self.config.pos == "sincos":
            return sincos_2d(grid, self.dim).to(self.pos_embed.device).unsqueeze(0)
        return resize_grid_embedding(self.pos_embed, self.grid_size, grid)

    def forward(self, batch_or_images: Batch | torch.Tensor) -> VisualTokens:
        images = images_of(batch_or_images, "grid encoder", self.config.backbone.in_channels)
        features = self.backbone(images)  # (B, C, h, w)
        grid = (features.shape[2], features.shape[3])
        x = self.proj(features.flatten(2).transpose(1, 2))  # (B, h*w, D)
        pos = self.position_embedding(grid)
        if pos is not None:
            x = x + pos.to(x.dtype)
        x = self.dropout(self.norm(x))
        positions = grid_token_positions(grid_positions(grid, x.device), x.shape[0])
        keep = self.config.sample_pixels
        if self.training and 0 < keep < x.shape[1]:
            x, positions = sample_tokens(x, positions, keep)
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        return VisualTokens(tokens=x, mask=mask, positions=positions)


part(VisionConfig, "grid", GridEncoder)(GridConfig)

__all__ = ["GridConfig", "GridEncoder", "sample_tokens"]
