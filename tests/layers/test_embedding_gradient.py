"""The token lookup that writes its weight gradient into the last step's memory (:mod:`vlp.layers.embedding`):
the same gradient as ``F.embedding``'s, bit for bit, and memory is reused only when nothing else holds it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vlp.layers.embedding as embedding

pytestmark = pytest.mark.skipif(embedding._other_users is None, reason="this PyTorch has no storage use counter")


@pytest.fixture(autouse=True)
def small_tables(monkeypatch) -> None:
    monkeypatch.setattr(embedding, "MIN_REUSED_BYTES", 0)  # the rule at any size, on small tables


def table_and_ids(seed: int = 0) -> tuple[nn.Embedding, torch.Tensor]:
    torch.manual_seed(seed)
    return nn.Embedding(50, 8), torch.randint(0, 50, (3, 7))  # ids repeat: rows accumulate


def plain_gradient(table: nn.Embedding, ids: torch.Tensor, upstream: torch.Tensor) -> torch.Tensor:
    return torch.autograd.grad(F.embedding(ids, table.weight), table.weight, upstream)[0]


def test_each_step_equals_f_embedding_and_reuses_the_memory():
    table, ids = table_and_ids()
    optimizer = torch.optim.SGD(table.parameters(), lr=0.1)
    pointers = []
    for _ in range(3):
        upstream = torch.randn(3, 7, 8)
        out = embedding.lookup(table, ids)
        torch.testing.assert_close(out, F.embedding(ids, table.weight), atol=0, rtol=0)
        expected = plain_gradient(table, ids, upstream)
        out.backward(upstream)
        torch.testing.assert_close(table.weight.grad, expected, atol=0, rtol=0)
        pointers.append(table.weight.grad.data_ptr())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    assert pointers[1] == pointers[0] and pointers[2] == pointers[0]


def test_memory_somebody_holds_is_never_written():
    table, ids = table_and_ids(1)
    embedding.lookup(table, ids).sum().backward()
    kept = table.weight.grad  # a hook, a logger or the user kept the last gradient
    before = kept.clone()
    table.weight.grad = None
    upstream = torch.randn(3, 7, 8)
    embedding.lookup(table, ids).backward(upstream)
    torch.testing.assert_close(kept, before, atol=0, rtol=0)
    assert table.weight.grad.data_ptr() != kept.data_ptr()
    torch.testing.assert_close(table.weight.grad, plain_gradient(table, ids, upstream), atol=0, rtol=0)


@pytest.mark.parametrize("set_to_none", [False, None])  # None: no zero_grad, gradients accumulate
def test_accumulated_and_zeroed_gradients_are_right(set_to_none):
    table, ids = table_and_ids(2)
    ups = [torch.randn(3, 7, 8) for _ in range(3)]
    total = torch.zeros_like(table.weight)
    for upstream in ups:
        embedding.lookup(table, ids).backward(upstream)
        if set_to_none is None:
            total += plain_gradient(table, ids, upstream)
        else:
            total = plain_gradient(table, ids, upstream)
        torch.testing.assert_close(table.weight.grad, total, atol=1e-6, rtol=1e-6)
        if set_to_none is not None:
            table.zero_grad(set_to_none=set_to_none)


def test_double_backward_is_recorded():
    table, ids = table_and_ids(3)
    out = embedding.lookup(table, ids)
    (grad,) = torch.autograd.grad(out.square().sum(), table.weight, create_graph=True)
    (second,) = torch.autograd.grad(grad.square().sum(), table.weight)
    ref_out = F.embedding(ids, table.weight)
    (ref_grad,) = torch.autograd.grad(ref_out.square().sum(), table.weight, create_graph=True)
    torch.testing.assert_close(second, torch.autograd.grad(ref_grad.square().sum(), table.weight)[0])


def test_it_is_taken_only_for_plain_trained_tables(monkeypatch):
    calls = []
    monkeypatch.setattr(embedding._Lookup, "apply", lambda *args: calls.append(args) or F.embedding(*args))
    _, ids = table_and_ids(4)
    embedding.lookup(nn.Embedding(50, 8, padding_idx=0), ids)
    embedding.lookup(nn.Embedding(50, 8, scale_grad_by_freq=True), ids)
    embedding.lookup(nn.Embedding(50, 8).requires_grad_(False), ids)
    with torch.no_grad():
        embedding.lookup(nn.Embedding(50, 8), ids)
    monkeypatch.setattr(embedding, "MIN_REUSED_BYTES", 50 * 8 * 4 + 1)
    embedding.lookup(nn.Embedding(50, 8), ids)  # smaller than the threshold
    assert calls == []
    monkeypatch.setattr(embedding, "MIN_REUSED_BYTES", 50 * 8 * 4)
    embedding.lookup(nn.Embedding(50, 8), ids)
    assert len(calls) == 1
