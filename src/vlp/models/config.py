"""The model section of a recipe: which parts, how big, which heads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vlp.fusion.config import FusionConfig
from vlp.text.config import TextConfig
from vlp.vision.config import VisionConfig


@dataclass
class ModelConfig:
    name: str = "custom"
    text: TextConfig | None = None
    vision: VisionConfig | None = None
    fusion: FusionConfig | None = None
    embed_dim: int = 0  # size of the dual-encoder embedding space; 0 = no dual-encoder side
    heads: dict[str, dict[str, Any]] = field(default_factory=dict)  # head name -> options
    momentum: float = 0.0  # EMA decay of the momentum model (ALBEF distillation); 0 = off
    tokenizer: str = ""  # tokenizer folder or file; empty = the recipe's default
