"""MapPool (SigLIP's attention-pooling head): padded tokens are left out exactly, and the pooling never reads
the mask back to the host (no device sync per call; torch.compile traces it whole)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vlp.layers.map_pool import MapPool

B, N, D, HEADS = 3, 7, 32, 4


def _pool(seed: int = 0) -> MapPool:
    torch.manual_seed(seed)
    return MapPool(D, HEADS, 64).eval()


def _reference(pool: MapPool, tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """One sample at a time over its kept tokens only, attention written out by hand."""
    attn = pool.attention
    wq, wk, wv = attn.in_proj_weight.chunk(3)
    bq, bk, bv = attn.in_proj_bias.chunk(3)
    rows = []
    for x, m in zip(tokens, keep):
        x = x[m]  # (n, D): the padded tokens are simply not there
        q = F.linear(pool.probe[0], wq, bq).view(1, HEADS, -1).transpose(0, 1)  # (H, 1, d)
        k = F.linear(x, wk, bk).view(-1, HEADS, D // HEADS).transpose(0, 1)  # (H, n, d)
        v = F.linear(x, wv, bv).view(-1, HEADS, D // HEADS).transpose(0, 1)
        weights = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(D // HEADS), dim=-1)
        out = F.linear((weights @ v).transpose(0, 1).reshape(1, D), attn.out_proj.weight, attn.out_proj.bias)
        rows.append((out + pool.mlp(pool.layernorm(out)))[0])
    return torch.stack(rows)


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randn(B, N, D, generator=torch.Generator().manual_seed(1))
    keep = torch.ones(B, N, dtype=torch.bool)
    keep[1, 4:] = False
    keep[2, 1:] = False  # a single kept token
    return tokens, keep


@torch.no_grad()
def test_padded_tokens_are_left_out():
    pool = _pool()
    tokens, keep = _inputs()
    torch.testing.assert_close(pool(tokens, keep), _reference(pool, tokens, keep), rtol=1e-5, atol=1e-6)
    changed = tokens.clone()
    changed[~keep] = 1e3  # whatever sits in a padded slot does not reach the output
    assert torch.equal(pool(changed, keep), pool(tokens, keep))


@pytest.mark.parametrize("train", [False, True])
def test_an_all_kept_mask_gives_exactly_the_unmasked_output(train):
    pool = _pool().train(train)
    tokens, _ = _inputs()
    full = torch.ones(B, N, dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(pool(tokens), _reference(pool, tokens, full), rtol=1e-5, atol=1e-6)
    out_none, out_mask = pool(tokens), pool(tokens, full)
    assert torch.equal(out_none, out_mask)  # bit for bit (CPU), gradients included
    probe_none = torch.autograd.grad(out_none.sum(), pool.probe)[0]
    probe_mask = torch.autograd.grad(out_mask.sum(), pool.probe)[0]
    assert torch.equal(probe_none, probe_mask)


@torch.no_grad()
def test_pooling_never_reads_the_mask_on_the_host():
    """A host read of the mask (``bool(mask.all())``) is a data-dependent branch: dynamo cannot trace it in one
    graph, and on a GPU it stalls the launch queue on every call."""
    pool = _pool()
    tokens, keep = _inputs()
    compiled = torch.compile(pool, backend="eager", fullgraph=True)
    assert torch.equal(compiled(tokens, keep), pool(tokens, keep))
    assert torch.equal(compiled(tokens, torch.ones_like(keep)), pool(tokens))
