"""co_attention fusion against a naive per-sublayer reference written with plain matmuls."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vlp.core.outputs import VisualTokens
from vlp.fusion import CoAttentionConfig, CoAttentionFusion

HEADS = 2


def naive_attention(attn, x, context, keep):
    """softmax(QK^T / sqrt(dh), padded keys removed) V, written out head by head."""
    if context is None:
        q, k, v = (x @ attn.qkv.weight.T + attn.qkv.bias).chunk(3, -1)
    else:
        q = x @ attn.q.weight.T + attn.q.bias
        k, v = (context @ attn.kv.weight.T + attn.kv.bias).chunk(2, -1)
    b, n, d = q.shape
    dh = d // HEADS
    out = torch.zeros_like(q)
    for h in range(HEADS):
        sl = slice(h * dh, (h + 1) * dh)
        scores = q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(dh)
        scores = scores.masked_fill(~keep[:, None, :], float("-inf"))
        out[..., sl] = scores.softmax(-1) @ v[..., sl]
    return out @ attn.out.weight.T + attn.out.bias


def ln(norm, x):
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def mlp(m, x):
    return F.gelu(x @ m.fc1.weight.T + m.fc1.bias) @ m.fc2.weight.T + m.fc2.bias


def naive_layer(layer, t, tm, v, vm, order, norm_first):
    def res(x, norm, fn):
        return x + fn(ln(norm, x)) if norm_first else ln(norm, x + fn(x))

    def self_step(t, v):
        t = res(t, layer.text.self_norm, lambda h: naive_attention(layer.text.self_attn, h, None, tm))
        v = res(v, layer.image.self_norm, lambda h: naive_attention(layer.image.self_attn, h, None, vm))
        return t, v

    def cross_step(t, v):
        tc = ln(layer.text.cross_norm, t) if norm_first else t
        vc = ln(layer.image.cross_norm, v) if norm_first else v
        t2 = res(t, layer.text.cross_norm, lambda h: naive_attention(layer.text.cross_attn, h, vc, vm))
        v2 = res(v, layer.image.cross_norm, lambda h: naive_attention(layer.image.cross_attn, h, tc, tm))
        return t2, v2

    steps = [cross_step, self_step] if order == "cross_first" else [self_step, cross_step]
    for step in steps:
        t, v = step(t, v)
    return res(t, layer.text.mlp_norm, lambda h: mlp(layer.text.mlp, h)), res(
        v, layer.image.mlp_norm, lambda h: mlp(layer.image.mlp, h)
    )


def make(order="cross_first", norm_first=False, **kw):
    torch.manual_seed(0)
    cfg = CoAttentionConfig(text_dim=16, image_dim=8, layers=2, heads=HEADS, order=order, norm_first=norm_first, **kw)
    return CoAttentionFusion(cfg).eval()


def inputs(image_width=8):
    g = torch.Generator().manual_seed(3)
    text_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    image_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.bool)
    return (
        torch.randn(2, 5, 16, generator=g),
        text_mask,
        VisualTokens(torch.randn(2, 4, image_width, generator=g), image_mask),
    )


@pytest.mark.parametrize("order", ["cross_first", "self_first"])
@pytest.mark.parametrize("norm_first", [False, True])
def test_co_attention_matches_naive_order(order, norm_first):
    fusion = make(order, norm_first)
    text, tm, image = inputs()
    with torch.no_grad():
        out = fusion(text, tm, image)
        t, v = text, image.tokens
        for layer in fusion.layers:
            t, v = naive_layer(layer, t, tm, v, image.mask, order, norm_first)
        if norm_first:
            t, v = ln(fusion.text_norm, t), ln(fusion.image_norm, v)
    torch.testing.assert_close(out.text[tm], t[tm], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.image[image.mask], v[image.mask], atol=1e-5, rtol=1e-4)
    pooled = torch.tanh(t[:, 0] @ fusion.text_pooler.dense.weight.T + fusion.text_pooler.dense.bias)
    torch.testing.assert_close(out.pooled, pooled, atol=1e-5, rtol=1e-4)


def test_co_attention_order_changes_the_result():
    cross_first, self_first = make("cross_first"), make("self_first")
    self_first.load_state_dict(cross_first.state_dict())  # same weights, other order
    text, tm, image = inputs()
    assert not torch.allclose(cross_first(text, tm, image).text, self_first(text, tm, image).text, atol=1e-3)


def test_co_attention_padding_is_ignored_and_pooling_both():
    fusion = make("self_first", pooling="both", image_in_dim=12)
    assert fusion.pooled_dim == 16 + 8
    text, tm, image = inputs(image_width=12)
    out = fusion(text, tm, image)
    assert out.pooled.shape == (2, 24) and out.image.shape == (2, 4, 8)
    noisy_text = torch.where(tm[..., None], text, torch.randn_like(text) * 3)
    noisy_image = VisualTokens(torch.where(image.mask[..., None], image.tokens, 7.0), image.mask)
    out2 = fusion(noisy_text, tm, noisy_image)
    torch.testing.assert_close(out.text[tm], out2.text[tm])
    torch.testing.assert_close(out.image[image.mask], out2.image[image.mask])
    torch.testing.assert_close(out.pooled, out2.pooled)
    image_pooled = torch.tanh(out.image[:, 0] @ fusion.image_pooler.dense.weight.T + fusion.image_pooler.dense.bias)
    torch.testing.assert_close(out.pooled[:, 16:], image_pooled)
