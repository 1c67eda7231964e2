"""Attention and transformer blocks against naive references."""

import math

import pytest
import torch

from vlp.layers import Attention, QuickGELU, Transformer, TransformerBlock, masked_mean


def naive_attention(attn: Attention, x, context=None, keep=None, causal=False):
    """softmax(Q K^T / sqrt(d) + mask) V, one head at a time, with explicit loops over heads."""
    d = x.shape[-1]
    if attn.cross:
        q = x @ attn.q.weight.T + attn.q.bias
        kv = context @ attn.kv.weight.T + attn.kv.bias
        k, v = kv[..., :d], kv[..., d:]
    else:
        qkv = x @ attn.qkv.weight.T + attn.qkv.bias
        q, k, v = qkv[..., :d], qkv[..., d : 2 * d], qkv[..., 2 * d :]
    dh = d // attn.heads
    outs = []
    for h in range(attn.heads):
        sl = slice(h * dh, (h + 1) * dh)
        scores = q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(dh)
        if keep is not None:
            scores = scores.masked_fill(~keep[:, None, :], float("-inf"))
        if causal:
            n_q, n_k = scores.shape[1:]
            future = torch.ones(n_q, n_k, dtype=torch.bool).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        outs.append(torch.softmax(scores, dim=-1) @ v[..., sl])
    return torch.cat(outs, -1) @ attn.out.weight.T + attn.out.bias


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_self_attention_matches_naive_with_padding():
    attn = Attention(16, 4).eval()
    x = torch.randn(3, 6, 16)
    keep = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    torch.testing.assert_close(attn(x, keep_mask=keep), naive_attention(attn, x, keep=keep), atol=1e-5, rtol=1e-5)


def test_causal_attention_matches_naive_and_ignores_future():
    attn = Attention(16, 2).eval()
    x = torch.randn(2, 5, 16)
    out = attn(x, causal=True)
    torch.testing.assert_close(out, naive_attention(attn, x, causal=True), atol=1e-5, rtol=1e-5)
    changed = x.clone()
    changed[:, 3:] = torch.randn(2, 2, 16)
    torch.testing.assert_close(attn(changed, causal=True)[:, :3], out[:, :3])


def test_cross_attention_matches_naive_with_context_mask():
    attn = Attention(16, 4, cross=True, context_dim=8).eval()
    x, ctx = torch.randn(2, 3, 16), torch.randn(2, 7, 8)
    keep = torch.tensor([[1] * 7, [1, 1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    got = attn(x, ctx, keep_mask=keep)
    torch.testing.assert_close(got, naive_attention(attn, x, ctx, keep), atol=1e-5, rtol=1e-5)


def test_fully_padded_keys_give_finite_output():
    attn = Attention(8, 2).eval()
    keep = torch.zeros(1, 4, dtype=torch.bool)
    assert torch.isfinite(attn(torch.randn(1, 4, 8), keep_mask=keep)).all()


def test_non_bool_mask_is_refused():
    with pytest.raises(TypeError, match="bool"):
        Attention(8, 2)(torch.randn(1, 3, 8), keep_mask=torch.ones(1, 3))


def test_post_norm_block_matches_bert_formula():
    block = TransformerBlock(8, 2, 16, norm_first=False, eps=1e-12).eval()
    x = torch.randn(2, 4, 8)
    h = block.norm1(x + block.attn(x))
    expected = block.norm2(h + block.mlp.fc2(torch.nn.functional.gelu(block.mlp.fc1(h))))
    torch.testing.assert_close(block(x), expected)


def test_pre_norm_block_with_quick_gelu_matches_clip_formula():
    block = TransformerBlock(8, 2, 16, norm_first=True, act="quick_gelu").eval()
    x = torch.randn(2, 4, 8)
    h = x + block.attn(block.norm1(x))
    inner = block.mlp.fc1(block.norm2(h))
    expected = h + block.mlp.fc2(inner * torch.sigmoid(1.702 * inner))
    torch.testing.assert_close(block(x), expected)
    assert isinstance(block.mlp.act, QuickGELU)


def test_padding_does_not_leak_into_real_tokens():
    model = Transformer(16, 2, 4, cross_attention=True).eval()
    x, ctx = torch.randn(1, 5, 16), torch.randn(1, 4, 16)
    keep = torch.tensor([[1, 1, 1, 0, 0]], dtype=torch.bool)
    ctx_keep = torch.tensor([[1, 1, 0, 0]], dtype=torch.bool)
    out = model(x, keep, ctx, ctx_keep)
    x2, ctx2 = x.clone(), ctx.clone()
    x2[:, 3:] += 5.0
    ctx2[:, 2:] -= 3.0
    torch.testing.assert_close(model(x2, keep, ctx2, ctx_keep)[:, :3], out[:, :3], atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(1)
    model = Transformer(16, 2, 4).train()
    x = torch.randn(2, 5, 16)
    model(x).sum().backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.grad_checkpointing = True
    model(x).sum().backward()
    for a, p in zip(plain, model.parameters()):
        torch.testing.assert_close(a, p.grad)


def test_bf16_autocast_close_to_fp32():
    model = Transformer(32, 2, 4).eval()
    x = torch.randn(2, 6, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x)
        assert model.layers[0].attn(x).dtype == torch.bfloat16  # matmuls really ran in bf16
    torch.testing.assert_close(low.float(), model(x), atol=0.1, rtol=0.05)


def test_masked_mean_counts_only_kept_tokens():
    x = torch.tensor([[[1.0], [3.0], [100.0]]])
    assert masked_mean(x, torch.tensor([[True, True, False]])).item() == 2.0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_stack_bias_cast_by_autocast_keeps_fully_padded_rows_finite(dtype):
    """The stack's bias is built once in the residual stream's float32; autocast casts it to the attention's
    fp16 / bf16, where float32's minimum is -inf: a row with no real token must still get finite weights,
    not NaN."""
    from vlp.layers.block import stack_bias

    x = torch.randn(2, 5, 8)
    keep = torch.tensor([[True, True, True, False, False], [False] * 5])
    bias = stack_bias(x, keep, causal=False).to(dtype)
    assert torch.isfinite(bias).all()
    q, k, v = (torch.randn(2, 2, 5, 4, dtype=dtype) for _ in range(3))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    assert torch.isfinite(out).all()
