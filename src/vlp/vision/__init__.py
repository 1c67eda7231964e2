"""Visual representations: patch (ViT), grid (CNN, CLIP ModifiedResNet) and region encoders.

Importing this package registers every encoder as a :class:`VisionConfig` member, so a
recipe's ``model.vision.type`` (``patch``, ``grid``, ``resnet_clip``, ``region``) resolves.
Every encoder is called as ``encoder(batch_or_images)`` and returns ``VisualTokens``
``(B, N, D)`` batch-first with a ``(B, N)`` bool keep-mask (``True`` = real token).
"""

from vlp.vision.base import VisualEncoder, images_of
from vlp.vision.clip_resnet import AttentionPool2d, ClipResNetConfig, ClipResNetEncoder
from vlp.vision.config import VisionConfig
from vlp.vision.grid import GridConfig, GridEncoder
from vlp.vision.patch import PatchConfig, PatchEncoder
from vlp.vision.region import RegionConfig, RegionEncoder, box_geometry
from vlp.vision.region_data import RegionFeatures, load_region_npz, pad_regions
from vlp.vision.resnet import ResNet, ResNetConfig

__all__ = [
    "AttentionPool2d",
    "ClipResNetConfig",
    "ClipResNetEncoder",
    "GridConfig",
    "GridEncoder",
    "PatchConfig",
    "PatchEncoder",
    "RegionConfig",
    "RegionEncoder",
    "RegionFeatures",
    "ResNet",
    "ResNetConfig",
    "VisionConfig",
    "VisualEncoder",
    "box_geometry",
    "images_of",
    "load_region_npz",
    "pad_regions",
]
