"""Pretraining and task data: formats, loaders, transforms, ShapesWorld."""

from vlp.data.batch import Batch

__all__ = ["Batch"]
