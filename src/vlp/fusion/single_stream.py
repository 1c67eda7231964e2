"""Single-stream fusion (VisualBERT, UNITER, OSCAR, ViLT, Pixel-BERT): one transformer over
the concatenation of text and visual tokens, i.e. merged self-attention."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vlp.config import part
from vlp.core.outputs import FusedOutput, VisualTokens
from vlp.fusion.base import FusionModule
from vlp.fusion.common import Pooler, check_heads, check_tokens, input_projection
from vlp.fusion.config import FusionConfig
from vlp.layers import Transformer


class SingleStreamFusion(FusionModule):
    """Merged self-attention over ``[text; image]``.

    forward(text (B, L, D_t), text_mask (B, L) bool, image: VisualTokens (B, N, D_v)) ->
    FusedOutput(text (B, L, D), image (B, N, D), pooled (B, D)). Masks are keep-masks
    (True = real token); padded tokens are never attended to, so changing them does not
    change the real tokens' outputs.

    A learned modality (token-type) embedding is added to each side (row 0 text, row 1
    image) so that attention can tell the two apart, as ViLT does. ``pooled`` is the first
    token (the text [CLS]) through a dense + tanh pooler. ``norm_first=True`` is the pre-norm
    stack of ViLT (followed by a final LayerNorm); ``False`` the post-norm stack of
    UNITER/VisualBERT. OSCAR's object tags need nothing here: the model appends the tag
    tokens to the text side (``[CLS] caption [SEP] tags [SEP]``) before calling this module.
    """

    def __init__(self, cfg: SingleStreamConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.text_in_dim = cfg.text_in_dim or cfg.dim
        self.image_in_dim = cfg.image_in_dim or cfg.dim
        self.text_dim = self.image_dim = self.pooled_dim = cfg.dim
        self.text_in = input_projection(cfg.text_in_dim, cfg.dim)
        self.image_in = input_projection(cfg.image_in_dim, cfg.dim)
        self.modality = nn.Embedding(2, cfg.dim) if cfg.modality_embeddings else None
        self.encoder = Transformer(
            cfg.dim,
            cfg.layers,
            cfg.heads,
            mlp_dim=int(cfg.dim * cfg.mlp_ratio),
            norm_first=cfg.norm_first,
            act=cfg.act,
            dropout=cfg.dropout,
            attn_dropout=cfg.dropout,
            eps=cfg.eps,
        )
        # A pre-norm stack leaves its output un-normalized; ViT/ViLT end with a LayerNorm.
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.eps) if cfg.norm_first else nn.Identity()
        self.pooler = Pooler(cfg.dim)

    def embed(self, text: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Project both sides to ``dim`` and add their modality embeddings."""
        text, image = self.text_in(text), self.image_in(image)
        if self.modality is not None:
            text = text + self.modality.weight[0]
            image = image + self.modality.weight[1]
        return text, image

    def forward(self, text: torch.Tensor, text_mask: torch.Tensor, image: VisualTokens) -> FusedOutput:
        check_tokens("text", text, text_mask, self.text_in_dim)
        check_tokens("image", image.tokens, image.mask, self.image_in_dim)
        t, v = self.embed(text, image.tokens)
        x = torch.cat([t, v], dim=1)
        mask = torch.cat([text_mask, image.mask], dim=1)
        x = self.norm(self.encoder(x, mask))
        length = text.shape[1]
        return FusedOutput(text=x[:, :length], image=x[:, length:], pooled=self.pooler(x[:, 0]))


@part(FusionConfig, "single_stream", SingleStreamFusion)
@dataclass
class SingleStreamConfig(FusionConfig):
    dim: int = 768
    layers: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0  # FFN width = dim * mlp_ratio
    norm_first: bool = True  # True: pre-norm (ViLT); False: post-norm (UNITER, VisualBERT)
    act: str = "gelu"
    dropout: float = 0.0
    eps: float = 1e-6  # LayerNorm epsilon (BERT-initialized stacks use 1e-12)
    modality_embeddings: bool = True  # add a learned text/image type embedding
    text_in_dim: int = 0  # width of the incoming text tokens; 0 = dim (else a Linear projects them)
    image_in_dim: int = 0  # width of the incoming visual tokens; 0 = dim

    def __post_init__(self) -> None:
        check_heads("single_stream", self.dim, self.heads)
