"""Config family of text encoders; members register with ``@part(TextConfig, name, Module)``."""

from typing import ClassVar

from vlp.config import Family


class TextConfig(Family):
    members: ClassVar[dict[str, type]] = {}
