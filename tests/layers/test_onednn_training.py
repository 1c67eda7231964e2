"""Training on oneDNN's GEMM (:mod:`vlp.layers.linear`): the same function and gradients as ``F.linear``, checked
against float64; taken only where it applies (autograd on, fp32 on CPU, layers of ONEDNN_MIN_WIDTH or more features
both ways)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vlp.layers.linear as linear
from vlp.layers.block import Transformer

pytestmark = pytest.mark.skipif(linear._FUSED_LINEAR is None, reason="this PyTorch build has no oneDNN")

TOL = dict(atol=2e-5, rtol=1e-5)


@pytest.fixture
def onednn_calls(monkeypatch) -> list[tuple[int, ...]]:
    """The output shape of every oneDNN GEMM that runs (forward or input gradient)."""
    calls: list[tuple[int, ...]] = []
    real = linear._FUSED_LINEAR

    def spy(x, weight, *args):
        out = real(x, weight, *args)
        calls.append(tuple(out.shape))
        return out

    monkeypatch.setattr(linear, "_FUSED_LINEAR", spy)
    return calls


def leaf(*shape: int, seed: int, requires_grad: bool = True, std: float = 1.0) -> torch.Tensor:
    return (std * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))).requires_grad_(requires_grad)


def grads(out: torch.Tensor, *leaves: torch.Tensor) -> list[torch.Tensor]:
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(9)).to(out.dtype)
    return list(torch.autograd.grad(out, leaves, upstream))


@pytest.mark.parametrize("bias", [True, False])
def test_forward_and_gradients_equal_float64(bias, onednn_calls):
    x = leaf(2, 5, 256, seed=0)
    weight, b = leaf(320, 256, seed=1), leaf(320, seed=2) if bias else None
    out = linear.linear(x, weight, b)
    assert onednn_calls == [(10, 320)]  # the forward, on rows
    leaves = [t for t in (x, weight, b) if t is not None]
    ours = grads(out, *leaves)
    assert onednn_calls == [(10, 320), (10, 256)]  # then the input gradient
    doubles = [t.detach().double().requires_grad_() for t in leaves]
    ref_out = F.linear(doubles[0], doubles[1], doubles[2] if bias else None)
    torch.testing.assert_close(out.double(), ref_out, **TOL)
    for got, want in zip(ours, grads(ref_out, *doubles)):
        torch.testing.assert_close(got.double(), want, **TOL)


def test_only_the_gradients_asked_for_are_computed(onednn_calls):
    x = leaf(7, 256, seed=3, requires_grad=False)  # pixels, or a frozen tower's output
    weight = leaf(512, 256, seed=4)
    frozen_bias = leaf(512, seed=5, requires_grad=False)
    out = linear.linear(x.t().contiguous().t(), weight, frozen_bias)  # a non-contiguous input
    (grad_weight,) = grads(out, weight)
    assert onednn_calls == [(7, 512)]  # no input gradient GEMM
    torch.testing.assert_close(grad_weight, grads(F.linear(x, weight, frozen_bias), weight)[0], **TOL)


def test_it_is_taken_only_where_it_applies(onednn_calls):
    wide, narrow = nn.Linear(256, 256), nn.Linear(256, linear.ONEDNN_MIN_WIDTH - 1)
    x = leaf(4, 256, seed=6)
    linear.project(narrow, x)  # narrower than ONEDNN_MIN_WIDTH one way
    linear.project(wide.double(), x.double())
    wide.float()
    with linear.plain_training():
        linear.project(wide, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        linear.project(wide, x)
    hooked = []
    wide.register_forward_hook(lambda *args: hooked.append(True))
    linear.project(wide, x)  # a hooked module runs its own forward, so its hooks run
    assert onednn_calls == [] and hooked == [True]
    linear.project(nn.Linear(256, linear.ONEDNN_MIN_WIDTH), x)
    assert onednn_calls == [(4, linear.ONEDNN_MIN_WIDTH)]


@pytest.mark.parametrize("checkpointing", [False, True])
def test_a_training_stack_equals_the_plain_path(checkpointing, onednn_calls):
    """Loss and every parameter's gradient of a 2-layer 256-wide stack, with and without gradient checkpointing,
    equal the plain F.linear path's; the oneDNN GEMMs ran (4 projections a layer, forward and backward)."""
    torch.manual_seed(0)
    stack = Transformer(256, 2, 4, act="quick_gelu").train()
    stack.grad_checkpointing = checkpointing
    x, keep = leaf(3, 6, 256, seed=7), torch.ones(3, 6, dtype=torch.bool)
    keep[1, 4:] = False

    def loss_and_grads() -> list[torch.Tensor]:
        loss = stack(x, keep).square().mean()
        return [loss.detach(), *torch.autograd.grad(loss, [x, *stack.parameters()])]

    ours = loss_and_grads()
    assert len(onednn_calls) == 2 * 4 * (3 if checkpointing else 2)  # a recomputed forward per layer
    with linear.plain_training():
        plain = loss_and_grads()
    for got, want in zip(ours, plain):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-4)


def test_double_backward_runs_on_differentiable_ops():
    """A gradient penalty (create_graph=True) differentiates the backward itself, as with F.linear."""
    # weights at 1/sqrt(fan-in), so that tanh does not saturate and its second derivative is not rounding
    x, weight, bias = leaf(6, 256, seed=10), leaf(256, 256, seed=11, std=1 / 16), leaf(256, seed=12)

    def penalty_grad(fn) -> torch.Tensor:
        (grad_x,) = torch.autograd.grad(fn(x, weight, bias).tanh().sum(), x, create_graph=True)
        return torch.autograd.grad(grad_x.square().sum(), weight)[0]

    with linear.plain_training():
        plain = penalty_grad(linear.linear)
    torch.testing.assert_close(penalty_grad(linear.linear), plain, **TOL)


def test_patch_embedding_trains_as_one_gemm(onednn_calls):
    """The patchify conv (kernel = stride) as a GEMM in training: tokens and the conv's gradients equal the conv's."""
    from vlp.vision.patch import PatchConfig, PatchEncoder

    torch.manual_seed(8)
    config = PatchConfig(image_size=(32, 48), patch_size=8, dim=128, layers=0, heads=4)
    encoder = PatchEncoder(config).train()
    images = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(9))
    conv = encoder.patch_embed
    upstream = torch.randn(2, 4 * 6 + 1, 128, generator=torch.Generator().manual_seed(10))

    def tokens_and_grads() -> list[torch.Tensor]:
        tokens = encoder(images).tokens
        return [tokens.detach(), *torch.autograd.grad(tokens, [conv.weight, conv.bias], upstream.to(tokens.dtype))]

    ours = tokens_and_grads()
    assert onednn_calls == [(2 * 4 * 6, 128)]  # the patches' forward; pixels need no gradient
    with linear.plain_training():
        plain = tokens_and_grads()  # nn.Conv2d
    assert len(onednn_calls) == 1
    encoder.double()  # float64 runs nn.Conv2d: the reference both fp32 paths are held to
    images = images.double()
    for got, conv_fp32, want in zip(ours, plain, tokens_and_grads()):
        scale = want.abs().max()
        assert (got - want).abs().max() <= 1e-6 * scale
        assert (conv_fp32 - want).abs().max() <= 1e-6 * scale


def test_the_pooled_last_layer_trains_on_slices_of_the_fused_weight(onednn_calls):
    """``forward_at`` projects the queried tokens with the query rows of the fused qkv weight and every token with
    the key/value rows: gradients through those slices equal the plain path's."""
    torch.manual_seed(1)
    stack = Transformer(128, 2, 4, act="quick_gelu").train()
    x = leaf(2, 5, 128, seed=11)
    index = torch.tensor([[4], [2]])

    def loss_and_grads() -> list[torch.Tensor]:
        loss = stack.forward_at(x, index, causal=True).square().mean()
        return [loss.detach(), *torch.autograd.grad(loss, [x, *stack.parameters()])]

    ours = loss_and_grads()
    assert (2, 128) in onednn_calls and (10, 256) in onednn_calls  # the sliced query and key/value projections
    with linear.plain_training():
        plain = loss_and_grads()
    for got, want in zip(ours, plain):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-4)
