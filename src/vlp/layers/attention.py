"""Multi-head attention on ``scaled_dot_product_attention``.

Shapes are batch-first: queries ``(B, Nq, D)``, context ``(B, Nk, Dc)``. Masks
are boolean *keep* masks: ``True`` marks a real token, ``False`` padding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vlp.layers.linear import fused_linear, linear, project

# The bias of a blocked key. Not a dtype's minimum: a float32 bias built once per stack is cast to fp16 / bf16
# under autocast, where float32's minimum is -inf, and a query whose keys are all blocked then gives NaN. Half
# of fp16's minimum stays finite in every float dtype, also with a score added, and exp() of it is exactly 0 in
# each, so attention over any unblocked key is unchanged.
BLOCKED = torch.finfo(torch.float16).min / 2


def attention_bias(
    keep_mask: torch.Tensor | None,
    causal: bool,
    num_queries: int,
    num_keys: int,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor | None:
    """Additive bias ``(B or 1, 1, Nq, Nk)`` that blocks padded keys and, if causal, future keys.

    A large finite negative (:data:`BLOCKED`, not -inf) is used so that a query whose keys are all
    padding gets finite weights instead of NaN, in any dtype the bias is cast to.
    """
    if keep_mask is None and not causal:
        return None
    blocked = torch.zeros(1, 1, num_queries, num_keys, dtype=torch.bool, device=device)
    if keep_mask is not None:
        if keep_mask.dtype != torch.bool:
            raise TypeError(f"keep_mask must be a bool tensor (True = keep), got {keep_mask.dtype}")
        blocked = blocked | ~keep_mask[:, None, None, :]
    if causal:
        future = torch.ones(num_queries, num_keys, dtype=torch.bool, device=device).triu(num_keys - num_queries + 1)
        blocked = blocked | future
    return blocked_bias(blocked, dtype)


def blocked_bias(blocked: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The additive attention bias of a bool mask: 0 where a query sees a key, :data:`BLOCKED` where ``blocked``."""
    return torch.zeros(blocked.shape, dtype=dtype, device=blocked.device).masked_fill(blocked, BLOCKED)


class Attention(nn.Module):
    """Self-attention (fused ``qkv`` projection) or cross-attention (``q`` and ``kv``).

    forward(x (B, Nq, D), context (B, Nk, Dc) | None, keep_mask (B, Nk) bool | None,
    causal) -> (B, Nq, D). Without ``context`` it attends over ``x`` itself.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        cross: bool = False,
        context_dim: int | None = None,
        dropout: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.cross = cross
        self.dropout = dropout
        if cross:
            self.q = nn.Linear(dim, dim, bias=bias)
            self.kv = nn.Linear(context_dim or dim, 2 * dim, bias=bias)
        else:
            self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.out = nn.Linear(dim, dim, bias=bias)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        keep_mask: torch.Tensor | None = None,
        causal: bool = False,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``bias``: the :func:`attention_bias` of ``keep_mask`` and ``causal`` when the caller already built it
        (a stack builds it once for all its layers); it then replaces them."""
        if self.cross:
            if context is None:
                raise ValueError("cross-attention needs a context tensor")
            q = project(self.q, x)
            k, v = project(self.kv, context).chunk(2, dim=-1)
        else:
            if context is not None:
                raise ValueError("self-attention takes no context; build it with cross=True")
            q, k, v = project(self.qkv, x).chunk(3, dim=-1)
        if bias is None:
            bias = attention_bias(keep_mask, causal, q.shape[1], k.shape[1], q.dtype, q.device)
        return self._attend(q, k, v, bias)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        q, k, v = self._split_heads(q), self._split_heads(k), self._split_heads(v)
        drop = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=drop)
        b, h, n, dh = out.shape
        return project(self.out, out.transpose(1, 2).reshape(b, n, h * dh))

    def merged_heads(self, h: torch.Tensor, batch: int, bias: torch.Tensor | None) -> torch.Tensor:
        """Self-attention up to the output projection, for the inference fast path: rows ``h`` (B*N, D) -> the
        heads' outputs, merged, (B*N, D); ``bias`` as in :meth:`forward`.

        The qkv projection is one :func:`fused_linear` (no bias broadcast); q, k and v are strided views of its
        output that SDPA reads in place, and SDPA's output transposed back is already the merged rows, so no
        head split or merge copies. Needs plain ``nn.Linear`` projections and no attention dropout (eval).
        """
        rows, dim = h.shape
        qkv = fused_linear(h, self.qkv.weight, self.qkv.bias)
        q, k, v = qkv.view(batch, rows // batch, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return out.transpose(1, 2).reshape(rows, dim)

    def forward_at(
        self,
        x_at: torch.Tensor,
        x: torch.Tensor,
        index: torch.Tensor,
        keep_mask: torch.Tensor | None = None,
        causal: bool = False,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Self-attention output ``(B, Q, D)`` at positions ``index`` ``(B, Q)`` only; ``x_at`` = ``x`` there.

        Keys and values come from every token of ``x`` (B, N, D), queries only from ``x_at``: the same
        numbers as :meth:`forward` at those positions, for ``Q / N`` of the query, output and attention work
        (the last layer of a tower whose pool reads one token). Causal: the query at position ``p`` sees keys
        ``<= p``. ``bias`` ``(B or 1, 1, Q, N)``, when given, replaces ``keep_mask`` and ``causal``.
        """
        if self.cross:
            raise ValueError("forward_at is self-attention only")
        dim = x.shape[-1]
        weight = getattr(self.qkv, "weight", None)
        if isinstance(weight, torch.Tensor):  # the query rows of the fused weight for the selected tokens only
            b = self.qkv.bias
            q = linear(x_at, weight[:dim], None if b is None else b[:dim])
            k, v = linear(x, weight[dim:], None if b is None else b[dim:]).chunk(2, dim=-1)
        else:  # a replaced projection (int8: vlp.models.quantize) is called whole
            q = self.qkv(x_at)[..., :dim]
            k, v = self.qkv(x)[..., dim:].chunk(2, dim=-1)
        if bias is None and (keep_mask is not None or causal):
            blocked = torch.zeros(1, 1, 1, x.shape[1], dtype=torch.bool, device=x.device)
            if keep_mask is not None:
                blocked = blocked | ~keep_mask[:, None, None, :]
            if causal:
                keys = torch.arange(x.shape[1], device=x.device)
                blocked = blocked | (keys > index[:, None, :, None])
            bias = blocked_bias(blocked, q.dtype)
        return self._attend(q, k, v, bias)
