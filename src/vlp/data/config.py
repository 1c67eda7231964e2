"""The data section of a recipe: which loader, which files, which transform."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class DataConfig:
    type: str = "shapesworld"  # a loader name registered in vlp.data
    root: str = ""  # dataset folder; paths below are relative to it
    paths: dict[str, str] = field(default_factory=dict)
    image_size: int = 224
    max_text_len: int = 40
    strict: bool = False  # raise on a bad sample instead of skipping and counting it
    options: dict[str, Any] = field(default_factory=dict)
