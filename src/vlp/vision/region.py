"""Region visual encoder, type ``"region"``: detector regions as tokens (ViLBERT, LXMERT, UNITER, OSCAR).

Each region's feature vector and its box geometry are embedded separately and summed
(UNITER's image embedding; LXMERT averages the same two terms):

    token = LayerNorm(W_f f) + LayerNorm(W_g g),   g = (x1, y1, x2, y2, w, h, w * h)

with the box normalized to [0, 1] (``box_embedding: xyxy`` uses the plain box, as LXMERT, and
``combine: mean`` halves the sum; ``box_embedding: none`` drops the box term, as VisualBERT).
Region features come from either

- ``source: features``: precomputed per image (bottom-up attention ``.npz``, see
  :mod:`vlp.vision.region_data`), read from ``Batch.region_features``; or
- ``source: roi_align``: pooled end to end from a ResNet feature map of ``Batch.images``
  over ``Batch.region_boxes`` with :func:`vlp.layers.roi_align.roi_align`, then averaged
  over the ROI bins.

Optional transformer layers over the regions (``layers: 0`` by default; LXMERT's
object encoder lives with the co-attention fusion).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from vlp.config import ConfigError, part
from vlp.core.outputs import VisualTokens
from vlp.data.batch import Batch
from vlp.layers.block import Transformer
from vlp.layers.roi_align import roi_align
from vlp.vision.base import VisualEncoder
from vlp.vision.config import VisionConfig
from vlp.vision.resnet import ResNet, ResNetConfig

GEOMETRY_DIM = 7


def box_geometry(boxes: torch.Tensor) -> torch.Tensor:
    """``(..., 4)`` normalized ``(x1, y1, x2, y2)`` -> ``(..., 7)`` ``(x1, y1, x2, y2, w, h, w * h)``."""
    x1, y1, x2, y2 = boxes.unbind(dim=-1)
    w, h = x2 - x1, y2 - y1
    return torch.stack([x1, y1, x2, y2, w, h, w * h], dim=-1)


@dataclass
class RegionConfig(VisionConfig):
    """Region embeddings. ``feature_dim`` is the detector's feature size (2048 for BUTD);
    with ``source: roi_align`` it is taken from ``backbone`` instead."""

    type: str = "region"
    feature_dim: int = 2048
    dim: int = 768
    source: Literal["features", "roi_align"] = "features"
    backbone: ResNetConfig | None = None  # required by source: roi_align
    roi_output_size: int = 7
    roi_sampling_ratio: int = -1  # <= 0: adaptive, as torchvision
    layers: int = 0
    heads: int = 12
    mlp_dim: int = 0  # 0 = 4 * dim
    act: str = "gelu"
    norm_first: bool = False  # the BERT-style post-norm blocks of LXMERT's object encoder
    eps: float = 1e-12
    dropout: float = 0.1
    # box term: "geometry" = the 7-d (x1, y1, x2, y2, w, h, w*h) of UNITER; "xyxy" = LXMERT's 4-d box;
    # "none" = VisualBERT (features only; region_boxes become optional)
    box_embedding: Literal["geometry", "xyxy", "none"] = "geometry"
    combine: Literal["sum", "mean"] = "sum"  # feature term + box term (UNITER) or their mean (LXMERT)

    def __post_init__(self) -> None:
        if self.source == "roi_align" and self.backbone is None:
            raise ConfigError("region.backbone: required with source: roi_align (the CNN whose map is pooled)")
        if self.source == "features" and self.backbone is not None:
            raise ConfigError("region.backbone: only used with source: roi_align; remove it or set the source")
        if self.layers < 0:
            raise ConfigError(f"region.layers: expected >= 0, got {self.layers}")
        if self.layers and self.dim % self.heads:
            raise ConfigError(f"region.dim {self.dim} is not divisible by region.heads {self.heads}")


class RegionEncoder(VisualEncoder):
    """Region encoder: ``forward(batch: Batch) -> VisualTokens``.

    Reads ``region_boxes (B, R, 4)`` normalized xyxy, ``region_mask (B, R)`` bool
    (``True`` = real region; all real when None) and either ``region_features
    (B, R, F)`` or ``images (B, 3, H, W)``. Returns batch-first tokens ``(B, R, D)``
    (zero at padded regions), the keep-mask ``(B, R)``, and positions ``(B, R, 7)``,
    the box geometry of :func:`box_geometry`.
    """

    def __init__(self, config: RegionConfig) -> None:
        super().__init__()
        self.config = config
        self.dim = config.dim
        self.backbone = ResNet(config.backbone) if config.source == "roi_align" else None
        feature_dim = self.backbone.out_channels if self.backbone is not None else config.feature_dim
        self.feature_dim = feature_dim
        self.feature_proj = nn.Linear(feature_dim, config.dim)
        self.feature_norm = nn.LayerNorm(config.dim, eps=config.eps)
        box_dims = {"geometry": GEOMETRY_DIM, "xyxy": 4, "none": 0}[config.box_embedding]
        self.box_proj = nn.Linear(box_dims, config.dim) if box_dims else None
        self.box_norm = nn.LayerNorm(config.dim, eps=config.eps) if box_dims else None
        self.dropout = nn.Dropout(config.dropout)
        self.transformer = (
            Transformer(
                config.dim,
                config.layers,
                config.heads,
                mlp_dim=config.mlp_dim or 4 * config.dim,
                norm_first=config.norm_first,
                act=config.act,
                dropout=config.dropout,
                eps=config.eps,
            )
            if config.layers
            else None
        )

    def _boxes_and_mask(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        boxes = batch.region_boxes
        if boxes is None and self.box_proj is None and self.backbone is None:
            # box_embedding: none reads no geometry; the regions are those of the features
            features = batch.region_features
            if features is None:
                raise ValueError("region encoder (source: features): the batch has no region_features (B, R, F)")
            boxes = features.new_zeros(*features.shape[:2], 4)
        if boxes is None:
            raise ValueError("region encoder: the batch has no region_boxes (B, R, 4)")
        if boxes.dim() != 3 or boxes.shape[-1] != 4:
            raise ValueError(f"region encoder: region_boxes must be (B, R, 4), got shape {tuple(boxes.shape)}")
        mask = batch.region_mask
        if mask is None:
            mask = torch.ones(boxes.shape[:2], dtype=torch.bool, device=boxes.device)
        if mask.dtype != torch.bool or mask.shape != boxes.shape[:2]:
            raise ValueError(
                f"region encoder: region_mask must be a bool (B, R) = {tuple(boxes.shape[:2])} tensor, "
                f"got {mask.dtype} {tuple(mask.shape)}"
            )
        boxes = boxes.masked_fill(~mask.unsqueeze(-1), 0.0)  # whatever padding holds, it is not read
        if boxes.numel() and bool((boxes.abs() > 1.0 + 1e-3).any()):
            raise ValueError(
                "region encoder: region_boxes must be normalized to [0, 1] (x1, y1, x2, y2); these look like pixels "
                "(see RegionFeatures.normalized_boxes)"
            )
        return boxes, mask

    def pool_features(self, images: torch.Tensor, boxes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ROIAlign-pooled backbone features ``(B, R, C)`` of the kept boxes (zeros where masked)."""
        if self.backbone is None:
            raise RuntimeError("pool_features needs source: roi_align")
        features = self.backbone(images)  # (B, C, h, w)
        height, width = images.shape[-2:]
        kept = mask.nonzero()  # (K, 2): image, region
        scale = boxes.new_tensor([width, height, width, height])
        rois = torch.cat([kept[:, :1].to(boxes.dtype), boxes[kept[:, 0], kept[:, 1]] * scale], dim=1)
        pooled = roi_align(
            features,
            rois,
            self.config.roi_output_size,
            spatial_scale=1.0 / self.config.backbone.stride,
            sampling_ratio=self.config.roi_sampling_ratio,
        ).mean(dim=(2, 3))  # (K, C)
        out = pooled.new_zeros(*mask.shape, pooled.shape[1])
        out[kept[:, 0], kept[:, 1]] = pooled
        return out

    def forward(self, batch_or_images: Batch | torch.Tensor) -> VisualTokens:
        if not isinstance(batch_or_images, Batch):
            raise TypeError(
                "region encoder: needs a Batch with region_boxes (and region_features or images), "
                f"got {type(batch_or_images).__name__}"
            )
        batch = batch_or_images
        boxes, mask = self._boxes_and_mask(batch)
        if self.backbone is not None:
            if batch.images is None:
                raise ValueError("region encoder (source: roi_align): the batch has no images to pool regions from")
            features = self.pool_features(batch.images, boxes, mask)
        else:
            features = batch.region_features
            if features is None:
                raise ValueError("region encoder (source: features): the batch has no region_features (B, R, F)")
            if features.shape[:2] != boxes.shape[:2] or features.shape[-1] != self.feature_dim:
                raise ValueError(
                    f"region encoder: region_features must be (B, R, {self.feature_dim}) matching region_boxes "
                    f"{tuple(boxes.shape)}, got {tuple(features.shape)}"
                )
            features = features.masked_fill(~mask.unsqueeze(-1), 0.0)
        geometry = box_geometry(boxes.to(features.dtype))
        x = self.feature_norm(self.feature_proj(features))
        if self.box_proj is not None:
            box = geometry if self.config.box_embedding == "geometry" else boxes.to(features.dtype)
            x = x + self.box_norm(self.box_proj(box))
            if self.config.combine == "mean":
                x = x / 2
        x = self.dropout(x)
        if self.transformer is not None:
            x = self.transformer(x, keep_mask=mask)
        x = x * mask.unsqueeze(-1).to(x.dtype)  # padded slots carry no signal
        return VisualTokens(tokens=x, mask=mask, positions=geometry)


part(VisionConfig, "region", RegionEncoder)(RegionConfig)

__all__ = ["GEOMETRY_DIM", "RegionConfig", "RegionEncoder", "box_geometry"]
