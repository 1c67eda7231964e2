"""Dual-encoder top-k, two-stage re-ranking and exhaustive pairwise scoring."""

import importlib.util

import pytest
import torch

from vlp.metrics import retrieval_metrics
from vlp.tasks.retrieval.search import exhaustive, rank_dual, rerank, similarity_matrix


class CountingScorer:
    """A synthetic pairwise scorer: looks pairs up in a fixed table and counts them."""

    def __init__(self, table: torch.Tensor) -> None:
        self.table = table
        self.pairs = 0
        self.calls = 0

    def __call__(self, image_idx: torch.Tensor, text_idx: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.pairs += image_idx.numel()
        return self.table[image_idx, text_idx]


def _embeddings(n_img=13, n_txt=29, dim=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n_img, dim, generator=gen), torch.randn(n_txt, dim, generator=gen)


@pytest.mark.parametrize("tile", [1, 4, 100])
def test_rank_dual_matches_full_topk(tile):
    img, txt = _embeddings()
    full = img @ txt.T
    out = rank_dual(img, txt, k=5, tile=tile)
    ref_i2t = full.topk(5, dim=1)
    ref_t2i = full.T.topk(5, dim=1)
    assert torch.allclose(out.i2t.scores, ref_i2t.values, atol=1e-6)
    assert torch.equal(out.i2t.indices, ref_i2t.indices)
    assert torch.allclose(out.t2i.scores, ref_t2i.values, atol=1e-6)
    assert torch.equal(out.t2i.indices, ref_t2i.indices)


def test_rank_dual_caps_k_and_normalizes():
    img, txt = _embeddings(n_img=3, n_txt=4)
    out = rank_dual(img * 7, txt, k=10, normalize=True)
    assert out.i2t.indices.shape == (3, 4) and out.t2i.indices.shape == (4, 3)
    assert out.i2t.scores.abs().max() <= 1 + 1e-6  # cosine similarities


@pytest.mark.skipif(importlib.util.find_spec("faiss") is None, reason="faiss is not installed (pip install faiss-cpu)")
def test_faiss_backend_agrees():
    img, txt = _embeddings()
    a = rank_dual(img, txt, k=6)
    b = rank_dual(img, txt, k=6, backend="faiss")
    assert torch.allclose(a.i2t.scores, b.i2t.scores, atol=1e-5)
    assert torch.equal(a.i2t.indices, b.i2t.indices) and torch.equal(a.t2i.indices, b.t2i.indices)


def test_exhaustive_scores_every_pair_once():
    table = torch.randn(5, 7)
    scorer = CountingScorer(table)
    out = exhaustive(scorer, 5, 7, batch_size=4)
    assert torch.equal(out, table)
    assert scorer.pairs == 35 and scorer.calls == 9  # ceil(35 / 4)


def test_two_stage_equals_exhaustive_when_k_covers_everything():
    img, txt = _embeddings(n_img=6, n_txt=9)
    table = torch.randn(6, 9)
    out = rerank(similarity_matrix(img, txt), CountingScorer(table), k=9)
    assert torch.equal(out.i2t, table) and torch.equal(out.t2i, table)
    assert out.num_pairs == 54  # deduplicated: each pair once


def test_two_stage_call_counts_and_shortlists():
    n_img, n_txt, k = 10, 40, 4
    img, txt = _embeddings(n_img, n_txt)
    sim = similarity_matrix(img, txt)
    table = torch.randn(n_img, n_txt)

    plain = CountingScorer(table)
    out = rerank(sim, plain, k, dedupe=False, batch_size=7)
    assert plain.pairs == out.num_pairs == k * (n_img + n_txt)  # versus n_img * n_txt = 400 exhaustively
    deduped = CountingScorer(table)
    out2 = rerank(sim, deduped, k)
    assert deduped.pairs == out2.num_pairs <= k * (n_img + n_txt)
    assert torch.equal(out.i2t, out2.i2t) and torch.equal(out.t2i, out2.t2i)

    # shortlisted pairs carry the pairwise score, all others -inf
    for i in range(n_img):
        short = sim[i].topk(k).indices
        assert torch.equal(out.i2t[i, short], table[i, short])
        assert torch.isneginf(out.i2t[i]).sum() == n_txt - k
    for j in range(n_txt):
        short = sim[:, j].topk(k).indices
        assert torch.equal(out.t2i[short, j], table[short, j])
        assert torch.isneginf(out.t2i[:, j]).sum() == n_img - k


def test_add_itc_and_fill_value():
    sim = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    table = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    out = rerank(sim, CountingScorer(table), k=1, add_itc=True, fill_value=-100.0)
    assert torch.allclose(out.i2t, torch.tensor([[1.9, -100.0], [-100.0, 4.8]]))


def test_reranking_with_a_better_scorer_raises_recall():
    # ITC is noisy; the pairwise scorer is nearly exact. Re-ranking the top 8 recovers most of the gap.
    gen = torch.Generator().manual_seed(0)
    n_img, per = 20, 5
    txt2img = torch.arange(n_img).repeat_interleave(per)
    truth = torch.zeros(n_img, n_img * per)
    truth[txt2img, torch.arange(n_img * per)] = 1.0
    itc = truth + 0.8 * torch.randn(truth.shape, generator=gen)
    itm = truth + 0.05 * torch.randn(truth.shape, generator=gen)
    before = retrieval_metrics(itc, txt2img)
    two = rerank(itc, CountingScorer(itm), k=8)
    after = retrieval_metrics(two.i2t, txt2img, sim_t2i=two.t2i)
    assert after["t2i_r1"] > before["t2i_r1"] and after["i2t_r1"] >= before["i2t_r1"]
    assert after["rsum"] > before["rsum"] + 50


def test_errors():
    img, txt = _embeddings()
    with pytest.raises(ValueError, match="embedding widths differ"):
        rank_dual(img, txt[:, :3], k=2)
    with pytest.raises(ValueError, match="unknown backend 'annoy'"):
        rank_dual(img, txt, k=2, backend="annoy")
    with pytest.raises(ValueError, match=r"score_fn returned shape \(1,\) for 2 pairs"):
        exhaustive(lambda i, t: torch.zeros(1), 1, 2)
