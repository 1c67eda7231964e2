"""What encoders, fusion modules and models hand to each other and to objectives.

The model contract that objectives and tasks rely on (every recipe's model
implements the parts it has; a dual encoder has no ``fuse``):

- ``model.text_tokens(input_ids, attention_mask, token_type_ids=None) -> (B, L, D)``
  unimodal text tokens (for single-stream models: just the embeddings);
- ``model.image_tokens(batch) -> VisualTokens`` unimodal visual tokens;
- ``model.fuse(text, text_mask, image: VisualTokens) -> FusedOutput``;
- ``model.encode_text(input_ids, attention_mask) -> (B, E)`` and
  ``model.encode_image(batch_or_images) -> (B, E)``: L2-normalized embeddings of
  the dual-encoder side;
- ``model.heads``: an ``nn.ModuleDict`` of task heads (``itm``, ``mlm``, ...);
- ``model(batch) -> ModelOutputs``: the unimodal pass every objective shares.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class VisualTokens:
    """Visual tokens ``(B, N, D)`` with a keep-mask ``(B, N)`` and positions.

    ``positions`` is what the encoder knows about where each token is: 2-D grid
    coordinates for patches and grid cells, box geometry for regions.
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    positions: torch.Tensor | None = None


@dataclass
class FusedOutput:
    """Fused text tokens ``(B, L, D)``, fused image tokens ``(B, N, D)`` (either
    may be None when a fusion design does not update that stream), and the pooled
    joint representation ``(B, D)`` used by ITM, VQA and other heads."""

    text: torch.Tensor | None
    image: torch.Tensor | None
    pooled: torch.Tensor


@dataclass
class ModelOutputs:
    """The shared unimodal pass of one training step.

    ``model`` is the model itself so that objectives can run extra passes (ITM
    negatives, masked text); ``momentum`` holds the same outputs from an EMA copy
    when momentum distillation is on.
    """

    model: Any
    text: torch.Tensor | None = None
    text_mask: torch.Tensor | None = None
    image: VisualTokens | None = None
    text_embed: torch.Tensor | None = None
    image_embed: torch.Tensor | None = None
    logit_scale: torch.Tensor | None = None
    logit_bias: torch.Tensor | None = None  # SigLIP's learnable bias (model.logit_bias), else None
    momentum: ModelOutputs | None = None
    extra: dict[str, Any] = field(default_factory=dict)
