"""Pretraining and task data: formats, loaders, transforms, ShapesWorld.

The public entry points are ``build_loader`` / ``build_dataset`` (a recipe's
``data`` section -> resumable batches), ``collate`` (samples -> ``Batch``) and
the format readers in :mod:`vlp.data.sources`. They are imported lazily so
that ``import vlp`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

from vlp.data.batch import Batch

_LAZY = {
    "build_loader": "vlp.data.loader",
    "build_dataset": "vlp.data.loader",
    "text_batches": "vlp.data.loader",
    "VLPLoader": "vlp.data.loader",
    "collate": "vlp.data.collate",
    "VLDataset": "vlp.data.dataset",
    "ShardStream": "vlp.data.streaming",
    "ResumableSampler": "vlp.data.sampler",
    "ImageTransform": "vlp.data.transforms",
    "decode_image": "vlp.data.image_io",
    "SampleError": "vlp.data.skipping",
    "Skipped": "vlp.data.skipping",
    "DataConfig": "vlp.data.config",
    "TransformConfig": "vlp.data.config",
    "safe_load": "vlp.data.safe_pickle",
}

__all__ = ["Batch", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vlp.data' has no attribute {name!r}")
