"""``none``: the dual encoder (CLIP, ALIGN). There is no fusion encoder; text and image meet
only in the model's similarity of their embeddings (``encode_text`` / ``encode_image``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlp.config import part
from vlp.core.outputs import FusedOutput, VisualTokens
from vlp.fusion.base import FusionModule
from vlp.fusion.config import FusionConfig


class NoFusion(FusionModule):
    """Marker module of a dual encoder: it has no weights and refuses to fuse.

    forward(text (B, L, D), text_mask (B, L), image: VisualTokens) raises, because a dual
    encoder has no joint representation; use the model's ``encode_text``/``encode_image``.
    """

    fuses = False
    text_dim = image_dim = pooled_dim = 0
    text_in_dim = image_in_dim = 0  # any width: nothing is computed

    def __init__(self, cfg: NoFusionConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, text: torch.Tensor, text_mask: torch.Tensor, image: VisualTokens) -> FusedOutput:
        raise RuntimeError(
            "this model is a dual encoder (fusion type 'none'): it has no fusion encoder, so there is no "
            "fuse(); compare model.encode_text(...) and model.encode_image(...) instead"
        )


@part(FusionConfig, "none", NoFusion)
@dataclass
class NoFusionConfig(FusionConfig):
    """No options: the dual encoder's only meeting point is the embedding similarity."""
