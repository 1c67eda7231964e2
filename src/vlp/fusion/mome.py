"""``mome`` (VLMo): a Mixture-of-Modality-Experts transformer. Self-attention is shared by
both modalities; the feed-forward layer is chosen per token from modality experts: V-FFN for
image tokens, L-FFN for text tokens, and, in the top ``vl_layers`` layers of the fusion mode,
VL-FFN for every token. The same weights serve as a dual encoder (text alone through L-FFN,
image alone through V-FFN, for retrieval) and as a fusion encoder (on the concatenation)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vlp.config import part
from vlp.core.outputs import FusedOutput, VisualTokens
from vlp.fusion.base import FusionModule
from vlp.fusion.common import Pooler, check_heads, check_tokens, input_projection
from vlp.fusion.config import FusionConfig
from vlp.layers import MLP, TransformerBlock

ROUTES = ("text", "image", "vl", "mixed")


class ModalityExperts(nn.Module):
    """Per-modality feed-forward experts, each ``LayerNorm -> MLP`` (VLMo gives every expert its own norm).

    forward(x (B, N, D), route, split) -> (B, N, D): ``route`` is ``"text"``, ``"image"`` or
    ``"vl"`` (one expert for all tokens), or ``"mixed"``: tokens ``[:split]`` go to the text
    expert and ``[split:]`` to the image expert.
    """

    def __init__(self, dim: int, hidden: int, act: str, dropout: float, eps: float, with_vl: bool) -> None:
        super().__init__()
        names = ["text", "image"] + (["vl"] if with_vl else [])
        self.experts = nn.ModuleDict(
            {n: nn.Sequential(nn.LayerNorm(dim, eps=eps), MLP(dim, hidden, act, dropout)) for n in names}
        )

    def forward(self, x: torch.Tensor, route: str = "text", split: int | None = None) -> torch.Tensor:
        if route == "mixed":
            if split is None:
                raise ValueError("route 'mixed' needs split = the number of text tokens")
            return torch.cat([self.experts["text"](x[:, :split]), self.experts["image"](x[:, split:])], dim=1)
        if route not in self.experts:
            raise ValueError(f"no {route!r} expert in this layer; experts: {', '.join(self.experts)}")
        return self.experts[route](x)


class MoMEFusion(FusionModule):
    """VLMo's shared-attention, modality-expert transformer (pre-norm).

    Fusion mode: forward(text (B, L, D), text_mask (B, L) bool, image: VisualTokens (B, N, D)) ->
    FusedOutput(text (B, L, D), image (B, N, D), pooled (B, D)) over ``[text; image]``, where
    the bottom ``layers - vl_layers`` layers route text tokens to L-FFN and image tokens to
    V-FFN and the top ``vl_layers`` layers send every token to VL-FFN. Dual-encoder mode:
    ``encode_text(text, mask) -> (B, L, D)`` (L-FFN in every layer) and
    ``encode_image(tokens, mask) -> (B, N, D)`` (V-FFN in every layer), with the SAME
    attention weights. Masks are keep-masks (True = real token). Inputs are the text
    embeddings and the patch embeddings (the model's text and vision parts have no layers).
    """

    towers_inside = True  # encode_text / encode_image run the shared layers with one expert

    def __init__(self, cfg: MoMEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.text_dim = self.image_dim = self.pooled_dim = d
        self.text_in_dim = cfg.text_in_dim or d
        self.image_in_dim = cfg.image_in_dim or d
        self.text_in = input_projection(cfg.text_in_dim, d)
        self.image_in = input_projection(cfg.image_in_dim, d)
        self.modality = nn.Embedding(2, d)
        self.first_vl = cfg.layers - cfg.vl_layers
        hidden = int(d * cfg.mlp_ratio)
        blocks = []
        for i in range(cfg.layers):
            block = TransformerBlock(
                d, cfg.heads, hidden, norm_first=True, act=cfg.act, dropout=cfg.dropout, eps=cfg.eps
            )
            # The experts carry their own LayerNorms, so the block's shared FFN norm goes unused.
            block.mlp = ModalityExperts(d, hidden, cfg.act, cfg.dropout, cfg.eps, with_vl=i >= self.first_vl)
            block.norm2 = nn.Identity()
            blocks.append(block)
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(d, eps=cfg.eps)
        self.pooler = Pooler(d)

    def run(self, x: torch.Tensor, mask: torch.Tensor, route: str, split: int | None = None) -> torch.Tensor:
        """All blocks with FFN ``route`` (``"mixed"`` switches to VL-FFN in the top layers), then the final norm."""
        if route not in ROUTES:
            raise ValueError(f"route must be one of {ROUTES}, got {route!r}")
        for i, block in enumerate(self.blocks):
            r = "vl" if route == "mixed" and i >= self.first_vl else route
            x = x + block.dropout(block.attn(block.norm1(x), keep_mask=mask))
            x = x + block.mlp(x, r, split)
        return self.norm(x)

    def encode_text(self, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """Text alone through shared attention + L-FFN: (B, L, D_in) -> (B, L, D)."""
        check_tokens("text", text, text_mask, self.text_in_dim)
        return self.run(self.text_in(text) + self.modality.weight[0], text_mask, "text")

    def encode_image(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Image alone through shared attention + V-FFN: (B, N, D_in) -> (B, N, D)."""
        check_tokens("image", tokens, mask, self.image_in_dim)
        return self.run(self.image_in(tokens) + self.modality.weight[1], mask, "image")

    def forward(self, text: torch.Tensor, text_mask: torch.Tensor, image: VisualTokens) -> FusedOutput:
        check_tokens("text", text, text_mask, self.text_in_dim)
        check_tokens("image", image.tokens, image.mask, self.image_in_dim)
        t = self.text_in(text) + self.modality.weight[0]
        v = self.image_in(image.tokens) + self.modality.weight[1]
        length = text.shape[1]
        x = self.run(torch.cat([t, v], 1), torch.cat([text_mask, image.mask], 1), "mixed", length)
        return FusedOutput(text=x[:, :length], image=x[:, length:], pooled=self.pooler(x[:, 0]))


@part(FusionConfig, "mome", MoMEFusion)
@dataclass
class MoMEConfig(FusionConfig):
    dim: int = 768
    layers: int = 12
    heads: int = 12
    vl_layers: int = 2  # top layers whose fusion mode uses VL-FFN (VLMo-Base: 2 of 12)
    mlp_ratio: float = 4.0
    act: str = "gelu"
    dropout: float = 0.0
    eps: float = 1e-6
    text_in_dim: int = 0  # incoming text width; 0 = dim
    image_in_dim: int = 0  # incoming patch-embedding width; 0 = dim

    def __post_init__(self) -> None:
        check_heads("mome", self.dim, self.heads)
        if not 0 <= self.vl_layers <= self.layers:
            raise ValueError(f"mome vl_layers must be in [0, layers={self.layers}], got {self.vl_layers}")
