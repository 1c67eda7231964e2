"""Config family of visual encoders (patch, grid, region, ...)."""

from typing import ClassVar

from vlp.config import Family


class VisionConfig(Family):
    members: ClassVar[dict[str, type]] = {}
