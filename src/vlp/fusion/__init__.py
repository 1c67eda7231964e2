"""Fusion modules: how text and visual tokens meet.

Every module is registered in :class:`FusionConfig` under its recipe ``type`` and takes
``forward(text (B, L, D), text_mask (B, L) bool, image: VisualTokens) -> FusedOutput``;
masks are keep-masks (True = real token). Each exposes ``text_in_dim``/``image_in_dim``
(the widths it accepts), ``text_dim``/``image_dim`` (the widths it returns) and
``pooled_dim`` so that the model can size its heads.

- ``single_stream``: merged self-attention over ``[text; image]`` (ViLT, UNITER, OSCAR).
- ``co_attention``: two streams with cross-attention both ways (LXMERT, METER).
- ``text_cross``: the text encoder's own cross-attention layers (ALBEF, BLIP).
- ``mome``: shared attention with modality experts (VLMo).
- ``none``: a dual encoder (CLIP) has no fusion.
"""

from vlp.fusion.co_attention import CoAttentionConfig, CoAttentionFusion, CoAttentionLayer
from vlp.fusion.common import Pooler
from vlp.fusion.config import FusionConfig
from vlp.fusion.mome import ModalityExperts, MoMEConfig, MoMEFusion
from vlp.fusion.none import NoFusion, NoFusionConfig
from vlp.fusion.single_stream import SingleStreamConfig, SingleStreamFusion
from vlp.fusion.text_cross import TextCrossConfig, TextCrossFusion

__all__ = [
    "CoAttentionConfig",
    "CoAttentionFusion",
    "CoAttentionLayer",
    "FusionConfig",
    "MoMEConfig",
    "MoMEFusion",
    "ModalityExperts",
    "NoFusion",
    "NoFusionConfig",
    "Pooler",
    "SingleStreamConfig",
    "SingleStreamFusion",
    "TextCrossConfig",
    "TextCrossFusion",
]
