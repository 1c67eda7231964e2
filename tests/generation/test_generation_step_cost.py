"""A training step's cost: the faster paths compute what the literal ones do (values and gradients), with less work.

Work is counted with torch's FLOP counter and by the shapes the kernels see, never by timing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from vlp.generation import unet as unet_module
from vlp.generation.unet import UNet, UNetConfig, Upsample


def naive_upsample(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Nearest x2 by repeating each pixel, then the 3x3 conv (padding 1): the definition, written out."""
    big = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    return F.conv2d(big, weight, bias, padding=1)


def grads(fn, *inputs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``fn(*inputs)`` and the gradients of a non-uniform function of it with respect to every input."""
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*inputs)
    weights = torch.linspace(-1.0, 1.0, out.numel()).view_as(out)  # every output position weighs differently
    (out * weights).sum().backward()
    return out.detach(), [t.grad for t in inputs]


@pytest.mark.parametrize("shape", [(2, 4, 4, 4), (3, 6, 5, 3), (1, 2, 1, 1)])
def test_upsample_equals_nearest_upsampling_then_the_3x3_conv(shape):
    torch.manual_seed(0)
    up = Upsample(shape[1])
    x = torch.randn(shape)
    weight, bias = up.conv.weight, up.conv.bias

    def folded(x_: torch.Tensor, w_: torch.Tensor, b_: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(up, {"conv.weight": w_, "conv.bias": b_}, (x_,))

    out, (gx, gw, gb) = grads(folded, x, weight, bias)
    ref, (rx, rw, rb) = grads(naive_upsample, x, weight, bias)
    assert out.shape == (shape[0], shape[1], 2 * shape[2], 2 * shape[3])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx, rx, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gw, rw, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gb, rb, rtol=1e-5, atol=1e-5)


def test_upsample_does_under_half_the_conv_work_of_the_literal_form():
    up = Upsample(16)
    x = torch.randn(4, 16, 8, 8, requires_grad=True)
    with FlopCounterMode(display=False) as fast:
        up(x).sum().backward()
    with FlopCounterMode(display=False) as literal:
        naive_upsample(x, up.conv.weight, up.conv.bias).sum().backward()
    # 16 instead of 36 multiply-adds per input pixel and channel pair, forward and backward alike
    assert fast.get_total_flops() == pytest.approx(literal.get_total_flops() * 16 / 36, rel=0.01)


def text_unet() -> UNet:
    """A tiny U-Net that uses the text every way the recipe's does: cross-attention at every level, self-attention,
    the pooled prompt in the timestep embedding; non-zero weights everywhere."""
    cfg = UNetConfig(
        channels=8, channel_mult=(1, 2), groups=4, heads=2, context_dim=12, self_attention_levels=[1],
        cross_attention_levels=[0, 1], pooled_text=True,
    )  # fmt: skip
    torch.manual_seed(0)
    net = UNet(cfg)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return net


def test_unet_attends_to_text_padded_to_a_multiple_of_16_tokens():
    net = text_unet()
    seen = []
    for module in net.modules():
        if isinstance(module, unet_module.SpatialAttention) and module.cross_attn is not None:
            module.cross_attn.register_forward_hook(lambda mod, args, kwargs, out: seen.append(args[1].shape[1]),
                                                    with_kwargs=True)  # fmt: skip
    mask = torch.tensor([[True] * 11, [True] * 4 + [False] * 7])
    net(torch.randn(2, 3, 8, 8), torch.tensor([3, 70]), torch.randn(2, 11, 12), mask)
    assert seen and set(seen) == {16}


@pytest.mark.parametrize("length", [5, 16, 17])
def test_padded_text_gives_the_unpadded_outputs_and_gradients(monkeypatch, length):
    net = text_unet()
    x, t = torch.randn(3, 3, 8, 8), torch.tensor([3, 70, 99])
    context = torch.randn(3, length, 12)
    mask = torch.ones(3, length, dtype=torch.bool)
    mask[1, 2:] = False  # a short caption
    mask[2, 1:] = False  # a null prompt: one kept token

    def run(ctx: torch.Tensor) -> torch.Tensor:
        return net(x, t, ctx, mask)

    out, (grad_context,) = grads(run, context)
    weights = {n: p.grad.clone() for n, p in net.named_parameters()}
    net.zero_grad()
    monkeypatch.setattr(unet_module, "pad_text", lambda c, m: (c, m))  # the U-Net as it was: the text as given
    ref, (ref_context,) = grads(run, context)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_context, ref_context, rtol=1e-5, atol=1e-5)
    for name, p in net.named_parameters():
        torch.testing.assert_close(weights[name], p.grad, rtol=1e-5, atol=1e-5, msg=name)


def test_pad_text_pads_with_masked_zero_tokens_and_fills_a_missing_mask():
    context = torch.randn(2, 3, 4)
    padded, mask = unet_module.pad_text(context, None, multiple=8)
    assert padded.shape == (2, 8, 4) and torch.equal(padded[:, :3], context) and padded[:, 3:].abs().sum() == 0
    assert mask.tolist() == [[True] * 3 + [False] * 5] * 2
    same, same_mask = unet_module.pad_text(padded, mask, multiple=8)
    assert same is padded and same_mask is mask


def literal_spatial_attention(block: unet_module.SpatialAttention, x, context, mask) -> torch.Tensor:
    """The block's definition, with the per-query key mask the attention layer builds from ``keep_mask``."""
    b, c, h, w = x.shape
    tokens = block.proj_in(block.norm(x)).flatten(2).transpose(1, 2)
    tokens = tokens + block.self_attn(block.norm_self(tokens))
    tokens = tokens + block.cross_attn(block.norm_cross(tokens), context, keep_mask=mask)
    tokens = tokens + block.mlp(block.norm_mlp(tokens))
    return x + block.proj_out(tokens.transpose(1, 2).reshape(b, c, h, w))


def test_spatial_attention_masks_the_text_with_one_broadcast_bias_row_per_caption():
    torch.manual_seed(0)
    block = unet_module.SpatialAttention(8, heads=2, groups=4, self_attn=True, context_dim=6)
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.2)
    biases = []
    block.cross_attn.register_forward_hook(
        lambda mod, args, kwargs, out: biases.append(kwargs.get("bias")), with_kwargs=True
    )
    x, context = torch.randn(2, 8, 4, 4), torch.randn(2, 5, 6)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    out, (gx, gc) = grads(lambda x_, c_: block(x_, c_, mask), x, context)
    assert [tuple(b.shape) for b in biases] == [(2, 1, 1, 5)]  # not (2, 1, 16, 5): one row per caption
    ref, (rx, rc) = grads(lambda x_, c_: literal_spatial_attention(block, x_, c_, mask), x, context)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx, rx, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gc, rc, rtol=1e-5, atol=1e-5)
    assert gc[1, 2:].abs().max() == 0  # masked tokens get no gradient
