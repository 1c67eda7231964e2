"""Dual-stream co-attention fusion (ViLBERT, LXMERT, METER): each stream keeps its own
weights; per layer they exchange information by cross-attention in both directions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from vlp.config import part
from vlp.core.outputs import FusedOutput, VisualTokens
from vlp.fusion.base import FusionModule
from vlp.fusion.common import Pooler, check_heads, check_tokens, input_projection, residual
from vlp.fusion.config import FusionConfig
from vlp.layers import MLP, Attention


class _Stream(nn.Module):
    """The sublayers of one stream in one co-attention layer."""

    def __init__(self, dim: int, other_dim: int, heads: int, mlp_dim: int, act: str, dropout: float, eps: float):
        super().__init__()
        self.self_attn = Attention(dim, heads, dropout=dropout)
        self.self_norm = nn.LayerNorm(dim, eps=eps)
        self.cross_attn = Attention(dim, heads, cross=True, context_dim=other_dim, dropout=dropout)
        self.cross_norm = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, mlp_dim, act, dropout)
        self.mlp_norm = nn.LayerNorm(dim, eps=eps)


class CoAttentionLayer(nn.Module):
    """Self-attention in each stream, cross-attention text->image and image->text, one FFN per stream.

    forward(text (B, L, Dt), text_mask (B, L), image (B, N, Dv), image_mask (B, N)) -> (text, image).
    ``order="cross_first"`` is LXMERT's cross-modality layer (cross, then self, then FFN);
    ``"self_first"`` is METER's (self, then cross, then FFN). In both, the two cross-attentions
    read the other stream as it was *before* this sublayer, so neither direction sees the
    other's update of the same step.
    """

    def __init__(
        self,
        text_dim: int,
        image_dim: int,
        heads: int,
        mlp_ratio: float,
        order: str,
        norm_first: bool,
        act: str,
        dropout: float,
        eps: float,
        shared_cross: bool = False,
    ) -> None:
        super().__init__()
        self.order = order
        self.norm_first = norm_first
        self.text = _Stream(text_dim, image_dim, heads, int(text_dim * mlp_ratio), act, dropout, eps)
        self.image = _Stream(image_dim, text_dim, heads, int(image_dim * mlp_ratio), act, dropout, eps)
        if shared_cross:
            # LXMERT: one cross-attention sublayer (attention + output LayerNorm) serves both directions
            self.image.cross_attn, self.image.cross_norm = self.text.cross_attn, self.text.cross_norm
        self.dropout = nn.Dropout(dropout)

    def _res(self, x: torch.Tensor, norm: nn.Module, fn) -> torch.Tensor:
        return residual(x, norm, fn, self.norm_first, self.dropout)

    def _self(self, t, tm, v, vm):
        t = self._res(t, self.text.self_norm, lambda h: self.text.self_attn(h, keep_mask=tm))
        v = self._res(v, self.image.self_norm, lambda h: self.image.self_attn(h, keep_mask=vm))
        return t, v

    def _cross(self, t, tm, v, vm):
        # Context is the other stream's input to this sublayer (normalized if pre-norm, as the
        # query side is), so both directions are computed from the same state.
        tc = self.text.cross_norm(t) if self.norm_first else t
        vc = self.image.cross_norm(v) if self.norm_first else v
        t_new = self._res(t, self.text.cross_norm, lambda h: self.text.cross_attn(h, vc, keep_mask=vm))
        v_new = self._res(v, self.image.cross_norm, lambda h: self.image.cross_attn(h, tc, keep_mask=tm))
        return t_new, v_new

    def forward(
        self, t: torch.Tensor, tm: torch.Tensor, v: torch.Tensor, vm: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.order == "cross_first":
            t, v = self._cross(t, tm, v, vm)
            t, v = self._self(t, tm, v, vm)
        else:
            t, v = self._self(t, tm, v, vm)
            t, v = self._cross(t, tm, v, vm)
        t = self._res(t, self.text.mlp_norm, self.text.mlp)
        v = self._res(v, self.image.mlp_norm, self.image.mlp)
        return t, v


class CoAttentionFusion(FusionModule):
    """Dual-stream fusion encoder.

    forward(text (B, L, Dt_in), text_mask (B, L) bool, image: VisualTokens (B, N, Dv_in)) ->
    FusedOutput(text (B, L, text_dim), image (B, N, image_dim), pooled). Masks are keep-masks
    (True = real token). The two streams may have different widths; inputs of another width
    are projected in by a Linear. ``pooling="text"`` pools the text [CLS] (LXMERT,
    pooled (B, text_dim)); ``"both"`` concatenates the text [CLS] and image first-token poolers
    (METER, pooled (B, text_dim + image_dim)).
    """

    def __init__(self, cfg: CoAttentionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.text_dim = cfg.text_dim
        self.image_dim = cfg.image_dim or cfg.text_dim
        self.text_in_dim = cfg.text_in_dim or self.text_dim
        self.image_in_dim = cfg.image_in_dim or self.image_dim
        self.text_in = input_projection(self.text_in_dim, self.text_dim)
        self.image_in = input_projection(self.image_in_dim, self.image_dim)
        self.layers = nn.ModuleList(
            CoAttentionLayer(
                self.text_dim,
                self.image_dim,
                cfg.heads,
                cfg.mlp_ratio,
                cfg.order,
                cfg.norm_first,
                cfg.act,
                cfg.dropout,
                cfg.eps,
                cfg.shared_cross_attention,
            )
            for _ in range(cfg.layers)
        )
        final = cfg.norm_first  # pre-norm stacks end with a LayerNorm per stream
        self.text_norm = nn.LayerNorm(self.text_dim, eps=cfg.eps) if final else nn.Identity()
        self.image_norm = nn.LayerNorm(self.image_dim, eps=cfg.eps) if final else nn.Identity()
        self.text_pooler = Pooler(self.text_dim)
        self.image_pooler = Pooler(self.image_dim) if cfg.pooling == "both" else None
        self.pooled_dim = self.text_dim + (self.image_dim if cfg.pooling == "both" else 0)

    def forward(self, text: torch.Tensor, text_mask: torch.Tensor, image: VisualTokens) -> FusedOutput:
        check_tokens("text", text, text_mask, self.text_in_dim)
        check_tokens("image", image.tokens, image.mask, self.image_in_dim)
        t, v = self.text_in(text), self.image_in(image.tokens)
        for layer in self.layers:
            t, v = layer(t, text_mask, v, image.mask)
        t, v = self.text_norm(t), self.image_norm(v)
        pooled = self.text_pooler(t[:, 0])
        if self.image_pooler is not None:
            pooled = torch.cat([pooled, self.image_pooler(v[:, 0])], dim=-1)
        return FusedOutput(text=t, image=v, pooled=pooled)


@part(FusionConfig, "co_attention", CoAttentionFusion)
@dataclass
class CoAttentionConfig(FusionConfig):
    text_dim: int = 768  # width of the text stream
    image_dim: int = 0  # width of the image stream; 0 = text_dim
    layers: int = 5
    heads: int = 12  # heads of every attention in both streams
    mlp_ratio: float = 4.0
    order: Literal["cross_first", "self_first"] = "cross_first"  # LXMERT | METER/ViLBERT
    pooling: Literal["text", "both"] = "text"  # LXMERT: text [CLS]; METER: concat of both [CLS]
    norm_first: bool = False  # BERT-style post-norm by default
    act: str = "gelu"
    dropout: float = 0.0
    eps: float = 1e-12
    text_in_dim: int = 0  # incoming text width; 0 = text_dim
    image_in_dim: int = 0  # incoming visual width; 0 = image_dim
    shared_cross_attention: bool = False  # LXMERT: both directions use one cross-attention (needs equal widths)

    def __post_init__(self) -> None:
        check_heads("co_attention (text stream)", self.text_dim, self.heads)
        check_heads("co_attention (image stream)", self.image_dim or self.text_dim, self.heads)
        if self.shared_cross_attention and (self.image_dim or self.text_dim) != self.text_dim:
            raise ValueError(
                f"fusion co_attention: shared_cross_attention needs image_dim == text_dim, got {self.image_dim} "
                f"and {self.text_dim}"
            )
