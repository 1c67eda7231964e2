"""Multihead attention pooling (MAP): SigLIP's image-embedding head.

One learned query (``probe``) attends over the visual tokens; the attended vector then goes
through a pre-norm MLP with a residual. Unlike a [CLS] token the probe never enters the
encoder's layers, so the encoder itself has no prefix token. Submodule names (``probe``,
``attention`` = ``nn.MultiheadAttention``, ``layernorm``, ``mlp.fc1`` / ``mlp.fc2``) are those of
transformers' ``SiglipMultiheadAttentionPoolingHead``, so checkpoint import is a rename.
"""

from __future__ import annotations

import torch
from torch import nn

from vlp.layers.block import MLP


class MapPool(nn.Module):
    """``(B, N, D)`` tokens with a keep-mask ``(B, N)`` -> ``(B, D)``."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, act: str = "gelu_tanh", eps: float = 1e-6) -> None:
        super().__init__()
        self.probe = nn.Parameter(torch.randn(1, 1, dim) * dim**-0.5)
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.layernorm = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, mlp_dim, act)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        probe = self.probe.to(tokens.dtype).expand(tokens.shape[0], -1, -1)
        # key_padding_mask: True = ignore. Passed whenever there is a mask: checking first whether it drops any
        # token (bool(mask.all())) would read it back to the host, a device sync per call. A query that is not
        # the keys never takes MultiheadAttention's fused fast path anyway, and an all-False key_padding_mask
        # adds zeros to the scores: on the CPU the output is bit for bit the unmasked one (tests/layers).
        ignore = None if mask is None else ~mask
        pooled = self.attention(probe, tokens, tokens, key_padding_mask=ignore, need_weights=False)[0]
        pooled = pooled + self.mlp(self.layernorm(pooled))
        return pooled[:, 0]


__all__ = ["MapPool"]
