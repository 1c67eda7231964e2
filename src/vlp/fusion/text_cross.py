"""``text_cross`` (ALBEF, BLIP): fusion *inside* the text encoder. The top layers of the text
encoder have cross-attention to the image tokens; running them with the image as context is
the fusion encoder. This module owns no transformer weights: it borrows the text encoder's
layers, so the unimodal and the fused text share every parameter they have in common.

Two layouts are supported:

- ALBEF (``from_layer: 6, restart: false``): layers 0-5 are the unimodal text encoder (no
  cross-attention); layers 6-11 (with cross-attention) fuse. ``model.text_tokens`` returns the
  output of layer 5 and this module continues from there.
- BLIP (``from_layer: 0, restart: true``): every layer has cross-attention. The unimodal text
  (for ITC) is all layers *without* context; the fused text re-runs all layers *with* context
  starting from the embeddings. ``model.text_tokens`` therefore returns the embeddings output
  (the input this module needs) and ``model.encode_text`` runs the whole stack on its own.

In general ``model.text_tokens`` runs layers ``[0, from_layer)`` and this module runs
``[from_layer, end)``; ``restart`` only says that the unimodal text encoder of the dual side is
the whole stack instead of its first ``from_layer`` layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vlp.config import ConfigError, part
from vlp.core.outputs import FusedOutput, VisualTokens
from vlp.fusion.base import FusionModule
from vlp.fusion.common import Pooler, check_tokens
from vlp.fusion.config import FusionConfig


class TextCrossFusion(FusionModule):
    """Runs the text encoder's layers ``[from_layer:]`` with the image tokens as cross-attention context.

    forward(text (B, L, D) hidden states after layer ``from_layer - 1`` (the embeddings output
    when ``from_layer == 0``), text_mask (B, L) bool keep-mask, image: VisualTokens (B, N, Dc)) ->
    FusedOutput(text (B, L, D), image None (the image stream is not updated), pooled (B, D)).
    ``pooled`` is the fused [CLS] (ALBEF's ITM input), through a dense + tanh pooler if
    ``pooler: true``. Must be bound to the text encoder (``bind(model.text)``) before use; the model
    does that when it is built.
    """

    image_dim = 0
    runs_text_encoder = True
    image_width_key = "model.text.context_dim"

    def __init__(self, cfg: TextCrossConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.from_layer = cfg.from_layer
        self.restart = cfg.restart
        self.pooler: nn.Module | None = None
        self.text_dim = self.pooled_dim = self.text_in_dim = self.image_in_dim = 0
        # The encoder is held outside the module tree (object.__setattr__) on purpose: it is
        # already a child of the model, and registering it twice would save its weights twice.
        object.__setattr__(self, "_encoder", None)

    @property
    def encoder(self) -> Any:
        if self._encoder is None:
            raise RuntimeError("text_cross fusion is not bound to a text encoder; call fusion.bind(model.text) first")
        return self._encoder

    @property
    def layers(self) -> list[nn.Module]:
        """The (shared) text-encoder blocks this module runs."""
        return list(self.encoder.layers[self.from_layer :])

    def bind(self, encoder: nn.Module) -> TextCrossFusion:
        """Attach to the text encoder whose layers ``[from_layer:]`` this module runs."""
        layers = getattr(encoder, "layers", None)
        if layers is None or not hasattr(encoder, "forward_layers"):
            raise ConfigError(f"text_cross fusion needs a text encoder with layers, got {type(encoder).__name__}")
        depth = len(layers)
        if not 0 <= self.from_layer < depth:
            raise ConfigError(
                f"model.fusion.from_layer: {self.from_layer} is outside the text encoder's {depth} layers"
            )
        missing = [i for i in range(self.from_layer, depth) if getattr(layers[i], "cross_attn", None) is None]
        if missing:
            raise ConfigError(
                f"model.fusion.from_layer: {self.from_layer} needs cross-attention in text layers "
                f"{self.from_layer}..{depth - 1}, but layers {missing} have none; set model.text.cross_attention_from "
                f"to at most {self.from_layer}"
            )
        object.__setattr__(self, "_encoder", encoder)
        dim = layers[self.from_layer].norm1.normalized_shape[0]
        self.text_dim = self.pooled_dim = self.text_in_dim = dim
        context_dim = layers[self.from_layer].cross_attn.kv.in_features
        self.image_in_dim = context_dim
        if self.cfg.pooler and self.pooler is None:
            self.pooler = Pooler(dim)
        return self

    def forward(self, text: torch.Tensor, text_mask: torch.Tensor, image: VisualTokens) -> FusedOutput:
        encoder = self.encoder
        check_tokens("text", text, text_mask, self.text_in_dim)
        check_tokens("image", image.tokens, image.mask, self.image_in_dim)
        fused = encoder.forward_layers(text, text_mask, self.from_layer, None, image.tokens, image.mask, False)
        cls = fused[:, 0]
        return FusedOutput(text=fused, image=None, pooled=self.pooler(cls) if self.pooler is not None else cls)

    def text_input_layers(self) -> int | None:
        return self.from_layer

    def unimodal_text_layers(self) -> int | None:
        # BLIP: the unimodal text is the whole stack without context; ALBEF: the layers below fusion
        return None if self.restart else self.from_layer


@part(FusionConfig, "text_cross", TextCrossFusion)
@dataclass
class TextCrossConfig(FusionConfig):
    from_layer: int = 6  # first text-encoder layer run with the image as context
    restart: bool = False  # BLIP: unimodal text = whole stack without context; fusion starts at the embeddings
    pooler: bool = False  # dense + tanh on the fused [CLS]; ALBEF and BLIP feed the raw [CLS] to ITM

    def __post_init__(self) -> None:
        if self.from_layer < 0:
            raise ValueError(f"text_cross from_layer must be >= 0, got {self.from_layer}")
        if self.restart and self.from_layer != 0:
            raise ValueError("text_cross restart: true (BLIP) re-runs the stack from the embeddings; set from_layer: 0")
