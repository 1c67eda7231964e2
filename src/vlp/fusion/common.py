"""Small pieces shared by the fusion modules: poolers, input projections, residual sublayers."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class Pooler(nn.Module):
    """BERT's pooler: ``tanh(W x + b)`` on one token, ``(B, D_in) -> (B, D_out)``."""

    def __init__(self, dim: int, out_dim: int | None = None) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, out_dim or dim)
        self.act = nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


def input_projection(in_dim: int, dim: int) -> nn.Module:
    """``Linear(in_dim, dim)`` when the incoming tokens have another width, else identity.

    ``in_dim == 0`` means "same as ``dim``" so that recipes only name a width when it differs.
    """
    if in_dim and in_dim != dim:
        return nn.Linear(in_dim, dim)
    return nn.Identity()


def residual(
    x: torch.Tensor,
    norm: nn.Module,
    fn: Callable[[torch.Tensor], torch.Tensor],
    norm_first: bool,
    dropout: nn.Module,
) -> torch.Tensor:
    """One residual sublayer: pre-norm ``x + f(norm(x))`` or post-norm ``norm(x + f(x))``."""
    if norm_first:
        return x + dropout(fn(norm(x)))
    return norm(x + dropout(fn(x)))


def check_tokens(name: str, tokens: torch.Tensor, mask: torch.Tensor, dim: int) -> None:
    """Fail early, naming the input, when tokens/masks do not fit ``(B, N, dim)`` / ``(B, N)`` bool."""
    if tokens.dim() != 3 or (dim and tokens.shape[-1] != dim):
        raise ValueError(f"{name} tokens must be (B, N, {dim or 'D'}), got {tuple(tokens.shape)}")
    if mask.dtype != torch.bool or mask.shape != tokens.shape[:2]:
        raise ValueError(
            f"{name} mask must be a bool keep-mask of shape {tuple(tokens.shape[:2])}, "
            f"got {mask.dtype} {tuple(mask.shape)}"
        )


def check_heads(name: str, dim: int, heads: int) -> None:
    """Config check: attention needs ``dim`` divisible by ``heads``."""
    if heads <= 0 or dim <= 0 or dim % heads:
        raise ValueError(f"fusion {name}: dim {dim} must be a positive multiple of heads {heads}")
