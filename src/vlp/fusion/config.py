"""Config family of fusion modules (single-stream, co-attention, ...)."""

from typing import ClassVar

from vlp.config import Family


class FusionConfig(Family):
    members: ClassVar[dict[str, type]] = {}
