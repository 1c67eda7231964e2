"""The GEMMs of the layers: ``F.linear``, or oneDNN's GEMM where it computes the same function faster.

Two paths leave ``F.linear`` (MKL's ``addmm`` on CPU) for oneDNN's GEMM, both fp32 on CPU only:

- inference (no autograd): :func:`fused_linear`, with the bias, an activation or a residual add applied as
  the GEMM writes its output (:func:`inference_fast_path`);
- training (autograd on): :class:`_OneDnnLinear`, the forward GEMM and the input-gradient GEMM on oneDNN,
  the weight-gradient GEMM on MKL (:func:`training_fast_path`), for layers at least :data:`ONEDNN_MIN_WIDTH`
  wide both ways.

Both are the same function as ``F.linear``; floats differ by rounding only. :func:`plain_inference` and
:func:`plain_training` turn them off within a block.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

# Measured on the AVX-512 AMD EPYC of the speed issue (2 threads, one process, idle): at CLIP-B/32's shapes
# (400-616 rows, 512-3072 wide) and at 128-wide towers (2,560-8,320 rows) oneDNN ran the forward GEMM and the
# input-gradient GEMM 1.05-1.7x faster than MKL, and the weight-gradient GEMM at par or up to 2x slower; with 64
# in or out features the forms were mixed (0.8-1.3x), so narrower layers (the demo's, 32-64 wide) keep MKL.
ONEDNN_MIN_WIDTH = 128


def _onednn_linear():
    """oneDNN's linear with a fused epilogue (the op PyTorch's inductor emits on CPU); None in a build without it."""
    try:
        return torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return None


def _cpu_autocast_check():
    """``torch.is_autocast_enabled("cpu")``; torch < 2.4 (which pyproject allows) spells it without the device."""
    try:
        torch.is_autocast_enabled("cpu")
        return lambda: torch.is_autocast_enabled("cpu")
    except TypeError:
        return torch.is_autocast_cpu_enabled


def _compiling_check():
    """``torch.compiler.is_compiling`` (torch >= 2.3), else dynamo's own."""
    found = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    if found is None:
        from torch import _dynamo

        found = _dynamo.is_compiling
    return found


_FUSED_LINEAR = _onednn_linear()
_cpu_autocast_on = _cpu_autocast_check()
_compiling = _compiling_check()
_plain_depth = {"inference": 0, "training": 0}  # nesting depth of plain_inference() / plain_training()


@contextlib.contextmanager
def _plain(kind: str) -> Iterator[None]:
    _plain_depth[kind] += 1
    try:
        yield
    finally:
        _plain_depth[kind] -= 1


def plain_inference() -> contextlib.AbstractContextManager[None]:
    """Within this block the layers take their plain path also in inference (to compare the two, or rule one out)."""
    return _plain("inference")


def plain_training() -> contextlib.AbstractContextManager[None]:
    """Within this block training runs every linear layer as ``F.linear`` (MKL on CPU), as before oneDNN's GEMM."""
    return _plain("training")


def _onednn_usable(x: torch.Tensor) -> bool:
    """fp32 on CPU, oneDNN built in and enabled, no autocast (which would pick another dtype), not being compiled
    (inductor does its own fusion)."""
    return (
        _FUSED_LINEAR is not None
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and torch.backends.mkldnn.enabled
        and not _cpu_autocast_on()
        and not _compiling()
    )


def _wide(weight: torch.Tensor) -> bool:
    """A 2-D weight of at least :data:`ONEDNN_MIN_WIDTH` in and out features."""
    return weight.dim() == 2 and min(weight.shape) >= ONEDNN_MIN_WIDTH


def inference_fast_path(x: torch.Tensor) -> bool:
    """Whether layers may compute on ``x`` with :func:`fused_linear`: no autograd (the fused op has no backward)
    and oneDNN usable on ``x``."""
    return not _plain_depth["inference"] and not torch.is_grad_enabled() and _onednn_usable(x)


def training_fast_path(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``linear(x, weight, ...)`` runs as :class:`_OneDnnLinear`: autograd on, oneDNN usable on ``x`` and
    ``weight``, and the layer at least :data:`ONEDNN_MIN_WIDTH` wide in and out."""
    return (
        not _plain_depth["training"]
        and torch.is_grad_enabled()
        and _wide(weight)
        and weight.dtype == torch.float32
        and _onednn_usable(x)
    )


def fused_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    act: str = "none",
    algorithm: str = "",
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """``act(x @ weight.T + bias)``, or ``x @ weight.T + bias + residual``, of rows ``x`` (M, K): one oneDNN GEMM
    that applies the bias and the activation or the residual add as it writes each output tile.

    For inference only (see :func:`inference_fast_path`). The plain path's ``addmm`` first broadcasts the bias
    into its output, and the activation and residual add are passes of their own over (M, N); here they ride in
    the GEMM. On the AVX-512 AMD EPYC it was measured on, oneDNN's fp32 GEMM was also 6-11% faster than MKL's
    at ViT-B shapes (1600 rows, 2 threads). The same function; floats differ by rounding only. ``act``:
    ``none``, ``swish`` (SiLU), ``gelu`` (``algorithm`` ``none`` = erf, ``tanh``), ``relu``. ``residual``
    (M, N) is read, not modified.
    """
    x = x.contiguous()
    if residual is not None:
        return _FUSED_LINEAR.binary(x, residual.contiguous(), weight, bias, "add")
    return _FUSED_LINEAR(x, weight, bias, act, [], algorithm)


class _OneDnnLinear(torch.autograd.Function):
    """``x @ weight.T + bias`` of rows ``x`` (M, K) for training: the forward GEMM (bias fused) and the
    input-gradient GEMM ``grad @ weight`` on oneDNN, the weight-gradient GEMM ``grad.T @ x`` on MKL (oneDNN was
    not faster there). Saves what ``F.linear`` saves: ``x`` and ``weight``. A backward that itself records a
    graph (``create_graph=True``) computes with plain differentiable ops, so double backward works."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _FUSED_LINEAR(x, weight, bias, "none", [], "")

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            if torch.is_grad_enabled():
                grad_x = grad.mm(weight)
            else:
                grad_x = _FUSED_LINEAR(grad, weight.t(), None, "none", [], "")
        if ctx.needs_input_grad[1]:
            grad_weight = grad.t().mm(x)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum(0)
        return grad_x, grad_weight, grad_bias


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``: as :func:`fused_linear` where :func:`inference_fast_path` allows it, as
    :class:`_OneDnnLinear` where :func:`training_fast_path` does."""
    rows = x.reshape(-1, x.shape[-1])
    if inference_fast_path(x):
        out = fused_linear(rows, weight, bias)
    elif training_fast_path(x, weight):
        out = _OneDnnLinear.apply(rows.contiguous(), weight, bias)
    else:
        return F.linear(x, weight, bias)
    return out.view(*x.shape[:-1], weight.shape[0])


def project(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)``; a plain ``nn.Linear`` of :data:`ONEDNN_MIN_WIDTH` or more features both ways, without forward
    hooks, runs as :func:`linear`. A replaced projection (int8, LoRA, a parametrization) is a module of another
    type and keeps its own forward; a narrower layer keeps ``F.linear`` in training and in inference alike."""
    plain = type(layer) is nn.Linear and not (layer._forward_hooks or layer._forward_pre_hooks)
    if plain and _wide(layer.weight):
        return linear(x, layer.weight, layer.bias)
    return layer(x)
