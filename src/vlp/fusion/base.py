"""What every fusion module declares, so that the model and the tasks ask a part what it does
instead of checking its class. A new fusion design subclasses :class:`FusionModule`, sets the
declarations that differ from the defaults, and needs no edit in the model or the tasks."""

from __future__ import annotations

from typing import ClassVar

from torch import nn


class FusionModule(nn.Module):
    """Base of the fusion parts: ``forward(text (B, L, D), text_mask (B, L) bool, image: VisualTokens)
    -> FusedOutput``, batch-first, keep-masks (True = real token).

    Widths (0 = any / none): ``text_in_dim`` / ``image_in_dim`` (what it takes), ``text_dim`` /
    ``image_dim`` (what it returns), ``pooled_dim`` (the joint [CLS] the heads read).
    """

    # False: a dual encoder; text and image meet only in the embedding similarity (no fuse()).
    fuses: ClassVar[bool] = True
    # True: the unimodal towers run inside this module's shared layers (VLMo), so it provides
    # encode_text(tokens, mask) / encode_image(tokens, mask) for the dual-encoder side.
    towers_inside: ClassVar[bool] = False
    # True: the module runs the text encoder's own layers and gets that encoder from the model.
    runs_text_encoder: ClassVar[bool] = False
    # The recipe key that sets the visual width the module takes (named in width errors).
    image_width_key: ClassVar[str] = "model.fusion.image_in_dim"

    text_in_dim: int = 0
    image_in_dim: int = 0
    text_dim: int = 0
    image_dim: int = 0
    pooled_dim: int = 0

    def bind(self, text_encoder: nn.Module) -> FusionModule:
        """Attach the model's text encoder (used only when ``runs_text_encoder``)."""
        return self

    def text_input_layers(self) -> int | None:
        """The text encoder runs layers ``[0, n)`` to make this module's text input; None = all of them."""
        return None

    def unimodal_text_layers(self) -> int | None:
        """Layers ``[0, n)`` of the text encoder that make the unimodal (dual-side) text; None = all."""
        return self.text_input_layers()
