"""Transformer blocks and stacks shared by every encoder and fusion module.

All tensors are batch-first ``(B, N, D)``; masks are boolean keep-masks
(``True`` = real token).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from vlp.layers.attention import Attention, attention_bias
from vlp.layers.linear import fused_linear, inference_fast_path, project

QUICK_GELU_SCALE = 1.702


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``, the activation of the original CLIP."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(QUICK_GELU_SCALE * x)


def quick_gelu_mlp(x: torch.Tensor, fc1: nn.Linear, fc2: nn.Linear) -> torch.Tensor:
    """``fc2(quick_gelu(fc1(x)))`` with one elementwise pass instead of three.

    ``quick_gelu(h) = silu(a h) / a`` with ``a = 1.702``: the factor ``a`` rides in fc1's GEMM (its alpha
    and beta) and ``1/a`` in fc2's (alpha), which BLAS applies for free, so the activation is a single
    fused SiLU. The same function; floats differ from the three-pass form by rounding only.
    """
    a = QUICK_GELU_SCALE
    flat = x.reshape(-1, x.shape[-1])
    h = torch.addmm(fc1.bias, flat, fc1.weight.t(), beta=a, alpha=a)
    h = F.silu(h, inplace=not torch.is_grad_enabled())  # autograd keeps h for SiLU's backward
    out = torch.addmm(fc2.bias, h, fc2.weight.t(), alpha=1 / a)
    return out.view(*x.shape[:-1], out.shape[-1])


def _times(t: torch.Tensor | None, scale: float) -> torch.Tensor | None:
    return t if t is None or scale == 1.0 else t * scale


def activation(name: str) -> nn.Module:
    table = {
        "gelu": nn.GELU,
        "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
        "quick_gelu": QuickGELU,
        "relu": nn.ReLU,
    }
    if name not in table:
        raise ValueError(f"unknown activation {name!r}; allowed: {', '.join(table)}")
    return table[name]()


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str = "gelu", dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = activation(act)
        self.fc2 = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._folds_quick_gelu():
            return self.dropout(quick_gelu_mlp(x, self.fc1, self.fc2))
        return self.dropout(project(self.fc2, self.act(project(self.fc1, x))))

    def _folds_quick_gelu(self) -> bool:
        # without autograd only: in training the GEMM scalars cost backward passes of their own (a CLIP-B/32 step
        # measured 1.441x transformers with the fold against 1.492x without); plain float layers only (a
        # quantized or otherwise replaced Linear keeps its own forward)
        plain = all(type(fc) is nn.Linear and fc.bias is not None for fc in (self.fc1, self.fc2))
        return plain and type(self.act) is QuickGELU and not torch.is_grad_enabled()

    def fusable(self) -> bool:
        """Whether :meth:`add_to` can run: plain ``nn.Linear`` layers and an activation oneDNN applies itself."""
        plain = all(type(fc) is nn.Linear for fc in (self.fc1, self.fc2))
        return plain and type(self.act) in (QuickGELU, nn.GELU, nn.ReLU)

    def add_to(self, rows: torch.Tensor, norm: nn.LayerNorm | None) -> torch.Tensor:
        """Inference fast path: ``rows + self(norm(rows))`` (``norm`` None: ``rows + self(rows)``) of ``(M, D)`` rows.

        fc1 with its bias and activation is one :func:`~vlp.layers.linear.fused_linear`, fc2 with its bias
        and the residual add another. oneDNN's SiLU has no scale, so QuickGELU runs as ``silu(a h) / a``
        (``a = 1.702``): ``a`` is folded into the norm's affine weights (D values; ``rows * a`` without a norm)
        and fc1's bias, and ``1 / a`` is one pass over the hidden rows. Dropout is not applied (eval only).
        """
        act, algorithm, scale = "relu", "", 1.0
        if type(self.act) is QuickGELU:
            act, scale = "swish", QUICK_GELU_SCALE
        elif type(self.act) is nn.GELU:
            act, algorithm = "gelu", self.act.approximate  # "none" (erf) or "tanh", as oneDNN names them
        if norm is not None and norm.weight is not None:
            h = F.layer_norm(
                rows, norm.normalized_shape, _times(norm.weight, scale), _times(norm.bias, scale), norm.eps
            )
        else:
            h = _times(norm(rows) if norm is not None else rows, scale)
        h = fused_linear(h, self.fc1.weight, _times(self.fc1.bias, scale), act, algorithm)
        if scale != 1.0:
            h.mul_(1 / scale)
        return fused_linear(h, self.fc2.weight, self.fc2.bias, residual=rows)


class LayerScale(nn.Module):
    """A learned per-channel scale ``x * gamma`` on a residual branch (CaiT; OpenCLIP's ``ls_init_value``)."""

    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class TransformerBlock(nn.Module):
    """Self-attention, optional cross-attention, then a feed-forward layer.

    ``norm_first=True`` is the pre-norm block of ViT/CLIP; ``False`` the post-norm
    block of BERT. ``mlp`` may be replaced by any module (VLMo swaps in modality
    experts) as long as it maps ``(B, N, D) -> (B, N, D)``. ``layer_scale`` (an initial
    value, None = off) scales the self-attention and feed-forward branches by learned
    per-channel ``ls1`` / ``ls2`` before they are added to the residual stream.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_dim: int | None = None,
        *,
        norm_first: bool = True,
        act: str = "gelu",
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        eps: float = 1e-6,
        cross_attention: bool = False,
        context_dim: int | None = None,
        layer_scale: float | None = None,
    ) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.attn = Attention(dim, heads, dropout=attn_dropout)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.cross_attn = (
            Attention(dim, heads, cross=True, context_dim=context_dim, dropout=attn_dropout)
            if cross_attention
            else None
        )
        self.norm_cross = nn.LayerNorm(dim, eps=eps) if cross_attention else None
        self.mlp = MLP(dim, mlp_dim or 4 * dim, act, dropout)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.dropout = nn.Dropout(dropout)
        # absent (not identity modules) without layer scale, so existing checkpoints keep their names
        self.ls1 = LayerScale(dim, layer_scale) if layer_scale is not None else None
        self.ls2 = LayerScale(dim, layer_scale) if layer_scale is not None else None

    def _residual(self, x: torch.Tensor, norm: nn.Module, fn, scale: nn.Module | None = None) -> torch.Tensor:
        if self.norm_first:
            branch = fn(norm(x))
            return x + self.dropout(scale(branch) if scale is not None else branch)
        branch = fn(x)
        return norm(x + self.dropout(scale(branch) if scale is not None else branch))

    def forward(
        self,
        x: torch.Tensor,
        keep_mask: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        causal: bool = False,
        attn_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``attn_bias``: :func:`~vlp.layers.attention.attention_bias` of ``keep_mask`` and ``causal``, built once
        by a stack for all its layers (None: built here)."""
        if self._inference_ready(x, context):
            return self._forward_inference(x, keep_mask, causal, attn_bias)

        def attend(h: torch.Tensor) -> torch.Tensor:
            return self.attn(h, keep_mask=keep_mask, causal=causal, bias=attn_bias)

        x = self._residual(x, self.norm1, attend, self.ls1)
        if self.cross_attn is not None and context is not None:
            x = self._residual(x, self.norm_cross, lambda h: self.cross_attn(h, context, keep_mask=context_mask))
        if self.norm_first:
            branch = self.mlp(self.norm2(x))
            return x + (self.ls2(branch) if self.ls2 is not None else branch)
        branch = self.mlp(x)
        return self.norm2(x + (self.ls2(branch) if self.ls2 is not None else branch))

    def _inference_ready(self, x: torch.Tensor, context: torch.Tensor | None) -> bool:
        """Whether :meth:`_forward_inference` computes this call: eval mode, no autograd, fp32 on CPU (see
        :func:`~vlp.layers.linear.inference_fast_path`), no cross-attention to run, no layer scale, and the
        plain parts it fuses (replaced ones, e.g. int8 linears or VLMo's experts, keep their own forward)."""
        if self.training or self.ls1 is not None or self.ls2 is not None or x.dim() != 3:
            return False
        if context is not None and self.cross_attn is not None:
            return False
        attn, mlp = self.attn, self.mlp
        parts = (
            type(attn) is Attention
            and not attn.cross
            and type(attn.qkv) is nn.Linear
            and type(attn.out) is nn.Linear
            and type(mlp) is MLP
            and mlp.fusable()
            and type(self.norm1) is nn.LayerNorm
            and type(self.norm2) is nn.LayerNorm
        )
        return parts and attn.qkv.weight.dtype == x.dtype and inference_fast_path(x)

    def _forward_inference(
        self,
        x: torch.Tensor,
        keep_mask: torch.Tensor | None,
        causal: bool,
        attn_bias: torch.Tensor | None,
    ) -> torch.Tensor:
        """:meth:`forward` for inference, on ``(B*N, D)`` rows: three oneDNN GEMMs with fused epilogues
        (qkv + bias; out + bias + residual; fc1 + bias + activation) and fc2 + bias + residual, around SDPA and
        the norms: no bias broadcasts, residual adds or activation passes of their own, no head copies. The
        same function as the plain path; floats differ by rounding only."""
        batch, n, dim = x.shape
        if attn_bias is None:
            attn_bias = attention_bias(keep_mask, causal, n, n, x.dtype, x.device)
        rows = x.reshape(batch * n, dim)
        heads = self.attn.merged_heads(self.norm1(rows) if self.norm_first else rows, batch, attn_bias)
        rows = fused_linear(heads, self.attn.out.weight, self.attn.out.bias, residual=rows)
        if self.norm_first:
            rows = self.mlp.add_to(rows, self.norm2)
        else:
            rows = self.norm2(self.mlp.add_to(self.norm1(rows), None))
        return rows.view(batch, n, dim)

    def forward_at(
        self,
        x: torch.Tensor,
        index: torch.Tensor,
        keep_mask: torch.Tensor | None = None,
        causal: bool = False,
        attn_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """This (pre-norm, self-attention) block's output ``(B, Q, D)`` at positions ``index`` ``(B, Q)`` only.

        The same numbers as ``forward(x)`` there: every token still gives keys and values, but only the
        ``Q`` selected ones are queried and go through the output projection and the MLP. For the last
        block of a tower whose pool reads one token ([CLS], CLIP's end token).
        """
        if not self.norm_first:  # cross-attention, as in forward without context, does not run
            raise ValueError("forward_at needs a pre-norm block (norm_first=True)")
        rows = index.unsqueeze(-1).expand(-1, -1, x.shape[-1])
        h = self.norm1(x)
        branch = self.attn.forward_at(h.gather(1, rows), h, index, keep_mask, causal, attn_bias)
        x = x.gather(1, rows) + self.dropout(self.ls1(branch) if self.ls1 is not None else branch)
        branch = self.mlp(self.norm2(x))
        return x + (self.ls2(branch) if self.ls2 is not None else branch)


def run_layer(stack: nn.Module, layer: nn.Module, *args: object) -> torch.Tensor:
    """``layer(*args)`` for a stack of layers, under gradient checkpointing when ``stack.grad_checkpointing`` is on,
    it trains and gradients are recorded."""
    if stack.grad_checkpointing and stack.training and torch.is_grad_enabled():
        return checkpoint(layer, *args, use_reentrant=False)
    return layer(*args)


def stack_bias(x: torch.Tensor, keep_mask: torch.Tensor | None, causal: bool) -> torch.Tensor | None:
    """The self-attention bias of a stack's layers, built once for all of them (None: no mask, not causal)."""
    if keep_mask is None and not causal:
        return None
    return attention_bias(keep_mask, causal, x.shape[1], x.shape[1], x.dtype, x.device)


class Transformer(nn.Module):
    """A stack of :class:`TransformerBlock` with optional gradient checkpointing.

    forward(x (B, N, D), keep_mask (B, N) bool, context, context_mask, causal) -> (B, N, D).
    ``return_all=True`` also returns the output of every layer (for parity tests
    and layer-wise features).
    """

    def __init__(self, dim: int, depth: int, heads: int, **block_kwargs) -> None:
        super().__init__()
        self.layers = nn.ModuleList(TransformerBlock(dim, heads, **block_kwargs) for _ in range(depth))
        self.grad_checkpointing = False

    def forward(
        self,
        x: torch.Tensor,
        keep_mask: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        causal: bool = False,
        return_all: bool = False,
    ):
        hidden = []
        bias = stack_bias(x, keep_mask, causal)
        for layer in self.layers:
            x = run_layer(self, layer, x, keep_mask, context, context_mask, causal, bias)
            if return_all:
                hidden.append(x)
        return (x, hidden) if return_all else x

    def forward_at(
        self, x: torch.Tensor, index: torch.Tensor, keep_mask: torch.Tensor | None = None, causal: bool = False
    ) -> torch.Tensor:
        """The stack's output ``(B, Q, D)`` at positions ``index`` ``(B, Q)``: every layer but the last in full,
        the last one for those queries only (:meth:`TransformerBlock.forward_at`). Needs ``depth >= 1``."""
        *body, last = self.layers
        bias = stack_bias(x, keep_mask, causal)
        for layer in body:
            x = run_layer(self, layer, x, keep_mask, None, None, causal, bias)
        return last.forward_at(x, index, keep_mask, causal)


def masked_mean(x: torch.Tensor, keep_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over tokens ``(B, N, D) -> (B, D)`` counting only kept tokens."""
    if keep_mask is None:
        return x.mean(dim=1)
    weights = keep_mask.to(x.dtype).unsqueeze(-1)
    return (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)


__all__ = ["MLP", "LayerScale", "QuickGELU", "Transformer", "TransformerBlock", "activation", "masked_mean"]
