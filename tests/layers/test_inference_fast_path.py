"""The blocks' inference fast path (oneDNN GEMMs with the bias, activation and residual add in their epilogue)
computes the plain path's function: outputs equal the plain fp32 path to 1e-6 and a float64 run of the same
weights to 1e-5, for every activation it fuses and both norm orders; training and autograd keep the plain path."""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn

import vlp
import vlp.layers.attention as attention
import vlp.layers.block as block
import vlp.layers.linear as linear
import vlp.vision.patch as patch
from vlp.layers.block import Transformer
from vlp.models.quantize import quantize_linear_int8

TOL = dict(atol=1e-6, rtol=1e-6)

pytestmark = pytest.mark.skipif(linear._FUSED_LINEAR is None, reason="this PyTorch build has no oneDNN")


@pytest.fixture
def fused_calls(monkeypatch) -> list[str]:
    """The activation (or ``residual``) of every fused GEMM that runs."""
    calls: list[str] = []
    real = linear.fused_linear

    def spy(x, weight, bias, act="none", algorithm="", residual=None):
        calls.append("residual" if residual is not None else act)
        return real(x, weight, bias, act, algorithm, residual)

    monkeypatch.setattr(linear, "fused_linear", spy)
    monkeypatch.setattr(attention, "fused_linear", spy)
    monkeypatch.setattr(block, "fused_linear", spy)
    return calls


def inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    keep = torch.ones(3, 7, dtype=torch.bool)
    keep[1, 4:] = False
    return torch.randn(3, 7, 32, generator=g), keep


def plain(stack: nn.Module, *args, **kwargs) -> torch.Tensor:
    """The plain path: autograd on, so the fast path does not apply."""
    with torch.enable_grad():
        return stack(*args, **kwargs).detach()


@pytest.mark.parametrize("act", ["quick_gelu", "gelu", "gelu_tanh", "relu"])
@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("causal", [False, True])
def test_fast_path_equals_the_plain_path_and_float64(act, norm_first, causal, fused_calls):
    torch.manual_seed(0)
    stack = Transformer(32, 2, 4, norm_first=norm_first, act=act, eps=1e-6).eval()
    for p in stack.parameters():  # non-zero norm affines and biases, so that folding a scale into them is tested
        p.data.add_(0.1 * torch.randn_like(p))
    x, keep = inputs()
    before = x.clone()
    with torch.inference_mode():
        fast = stack(x, keep, causal=causal)
    kind = {"quick_gelu": "swish", "gelu": "gelu", "gelu_tanh": "gelu", "relu": "relu"}[act]
    assert fused_calls == ["none", "residual", kind, "residual"] * 2  # qkv, out, fc1, fc2 of both layers
    assert torch.equal(x, before)  # the residual stream handed in is read, not overwritten
    torch.testing.assert_close(fast, plain(stack, x, keep, causal=causal), **TOL)
    with torch.no_grad():
        ref64 = stack.double()(x.double(), keep, causal=causal)  # float64 keeps the plain path
    torch.testing.assert_close(fast.double(), ref64, atol=1e-5, rtol=1e-5)


def test_a_hand_worked_quick_gelu_block():
    """One pre-norm block of width 2, one head, hand-set weights, against the block written out in float64."""
    blk = block.TransformerBlock(2, 1, 2, act="quick_gelu", eps=1e-5).eval()
    with torch.no_grad():
        for p in blk.parameters():
            p.copy_(torch.linspace(-0.7, 0.9, p.numel()).view_as(p))
    x = torch.tensor([[[1.0, -2.0], [0.5, 3.0], [-1.5, 0.25]]])
    with torch.inference_mode():
        fast = blk(x)

    d = {k: v.double() for k, v in blk.state_dict().items()}
    x64 = x.double()[0]

    def norm(t, name):
        mean, var = t.mean(-1, keepdim=True), t.var(-1, unbiased=False, keepdim=True)
        return (t - mean) / torch.sqrt(var + 1e-5) * d[f"{name}.weight"] + d[f"{name}.bias"]

    q, k, v = (norm(x64, "norm1") @ d["attn.qkv.weight"].T + d["attn.qkv.bias"]).split(2, dim=-1)
    weights = torch.softmax(q @ k.T / 2**0.5, dim=-1)
    h = x64 + (weights @ v) @ d["attn.out.weight"].T + d["attn.out.bias"]
    hidden = norm(h, "norm2") @ d["mlp.fc1.weight"].T + d["mlp.fc1.bias"]
    want = h + (hidden * torch.sigmoid(1.702 * hidden)) @ d["mlp.fc2.weight"].T + d["mlp.fc2.bias"]
    torch.testing.assert_close(fast[0].double(), want, **TOL)


def test_forward_at_on_the_fast_path_equals_the_full_rows(fused_calls):
    torch.manual_seed(1)
    stack = Transformer(32, 3, 4, norm_first=True, act="quick_gelu").eval()
    x, keep = inputs(1)
    index = torch.tensor([[0, 6], [3, 2], [5, 5]])
    with torch.inference_mode():
        at = stack.forward_at(x, index, keep, causal=True)
    assert fused_calls[-1] == "none"  # the last layer's key/value projection
    full = plain(stack, x, keep, causal=True)
    torch.testing.assert_close(at, full.gather(1, index[..., None].expand(-1, -1, 32)), **TOL)


def test_training_and_autograd_keep_the_plain_path_and_gradients_flow(fused_calls):
    torch.manual_seed(2)
    stack = Transformer(32, 2, 4, act="quick_gelu")
    x, keep = inputs(2)
    stack(x, keep).square().sum().backward()  # training mode
    stack.eval()(x, keep).sum().backward()  # eval, but autograd on
    with torch.no_grad():
        stack.train()(x, keep)  # no autograd, but training mode (dropout, a momentum encoder's forward)
    assert fused_calls == []
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in stack.parameters())


def test_parts_it_cannot_fuse_keep_their_own_forward(fused_calls):
    torch.manual_seed(3)
    x, keep = inputs(3)
    scaled = Transformer(32, 1, 4, layer_scale=0.5).eval()
    int8 = quantize_linear_int8(Transformer(32, 1, 4, act="quick_gelu")).eval()
    for stack in (scaled, int8):
        with torch.inference_mode():
            out = stack(x, keep)
        torch.testing.assert_close(out, plain(stack, x, keep), atol=0, rtol=0)
    stack = Transformer(32, 1, 4).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast still picks the dtypes
        with torch.inference_mode():
            out = stack(x, keep)
        torch.testing.assert_close(out, plain(stack, x, keep), atol=0, rtol=0)
    assert fused_calls == []


def test_clip_embeddings_in_inference_mode_equal_the_plain_path():
    torch.manual_seed(4)
    model = vlp.create_model("clip-tiny").eval()
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    ids = torch.randint(5, model.cfg.text.vocab_size - 2, (3, 12), generator=torch.Generator().manual_seed(6))
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[0, 5:] = False
    with torch.inference_mode():
        image, text = model.encode_image(images), model.encode_text(ids, mask)
    with torch.enable_grad():
        ref_image, ref_text = model.encode_image(images).detach(), model.encode_text(ids, mask).detach()
    torch.testing.assert_close(image, ref_image, **TOL)
    torch.testing.assert_close(text, ref_text, **TOL)


def test_plain_inference_turns_the_fast_path_off(fused_calls):
    torch.manual_seed(5)
    stack = Transformer(32, 2, 4, act="quick_gelu").eval()
    x, keep = inputs(5)
    with linear.plain_inference(), torch.inference_mode():
        out = stack(x, keep)
    assert fused_calls == []
    # the same up to rounding: without autograd the MLP still folds QuickGELU's scale into its GEMMs
    torch.testing.assert_close(out, plain(stack, x, keep), atol=1e-6, rtol=1e-5)
    with torch.inference_mode():
        stack(x, keep)
    assert len(fused_calls) == 8  # on again after the block


@pytest.mark.parametrize("bias", [True, False])
def test_patch_embedding_as_one_gemm_equals_the_conv(bias, fused_calls):
    """Non-square images, with and without the conv's bias: the tokens of the encoder equal the plain path's,
    and the patch embedding equals a float64 conv."""
    torch.manual_seed(6)
    config = patch.PatchConfig(image_size=(32, 48), patch_size=8, dim=32, layers=1, heads=4, patch_bias=bias)
    encoder = patch.PatchEncoder(config).eval()
    images = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        patches = encoder.embed_patches(images)
        tokens = encoder(images).tokens
    assert fused_calls == ["none"] + ["none", "none", "residual", "gelu", "residual"]  # patches; patches, block
    conv = encoder.patch_embed
    bias64 = conv.bias.double() if bias else None
    ref = torch.nn.functional.conv2d(images.double(), conv.weight.double(), bias64, stride=8)
    assert patches.shape == ref.shape == (2, 32, 4, 6)
    torch.testing.assert_close(patches.double(), ref, **TOL)
    with linear.plain_inference(), torch.inference_mode():
        torch.testing.assert_close(tokens, encoder(images).tokens, **TOL)


def test_fast_path_checks_work_with_the_older_torch_spellings(monkeypatch):
    # pyproject allows torch >= 2.2: is_autocast_enabled took no device before 2.4, torch.compiler.is_compiling
    # came in 2.3; the checks fall back to the older spellings instead of raising on every inference call
    def no_device(*args):
        if args:
            raise TypeError("is_autocast_enabled() takes 0 positional arguments")
        return False

    monkeypatch.setattr(torch, "is_autocast_enabled", no_device)
    monkeypatch.setattr(torch, "is_autocast_cpu_enabled", lambda: True)
    assert linear._cpu_autocast_check()() is True
    from torch import _dynamo  # imported before torch.compiler is replaced: it reads it

    monkeypatch.setattr(torch, "compiler", types.SimpleNamespace())
    assert linear._compiling_check() is _dynamo.is_compiling
