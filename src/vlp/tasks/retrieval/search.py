"""Model-independent image-text retrieval search: dual-encoder top-k and two-stage re-ranking.

- :func:`rank_dual`: top-k in both directions from precomputed embeddings
  ``image_emb (N_i, D)``, ``text_emb (N_t, D)``, by tiled matrix products whose
  memory is ``O(tile^2 + (N_i + N_t) k)``, never ``N_i x N_t``; or with faiss.
- :func:`rerank`: the ALBEF/BLIP evaluation. The dual-encoder (ITC) similarity
  shortlists the top-k texts of every image and the top-k images of every text;
  only those pairs are scored by an expensive pairwise scorer (the ITM head on
  the fusion encoder); every pair outside the shortlist gets ``fill_value``.
  The two directions give two score matrices.
- :func:`exhaustive`: the same scorer on every pair, the reference (and the cost)
  that two-stage search avoids.

A pairwise scorer is ``score_fn(image_idx: LongTensor (P,), text_idx: LongTensor (P,)) -> Tensor (P,)``:
the scores of the P pairs ``(image_idx[p], text_idx[p])``, higher = better match.
It is called on batches of at most ``batch_size`` pairs, with CPU index tensors (move them to the
model's device inside the scorer), and its scores are collected on the CPU.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import torch

PairScorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class TopK:
    """scores (N, k) in descending order and the matching candidate indices (N, k) long."""

    scores: torch.Tensor
    indices: torch.Tensor


@dataclass
class DualRanking:
    """i2t: the top-k texts of every image; t2i: the top-k images of every text."""

    i2t: TopK
    t2i: TopK


@dataclass
class RerankResult:
    """Two-stage scores, both ``(n_images, n_texts)``.

    i2t: for image -> text retrieval (row i re-scores image i's shortlist);
    t2i: for text -> image retrieval (column j re-scores text j's shortlist);
    pairs outside the respective shortlist hold ``fill_value``.
    num_pairs: how many pairs the pairwise scorer was run on.
    """

    i2t: torch.Tensor
    t2i: torch.Tensor
    num_pairs: int


def _check_emb(image_emb: torch.Tensor, text_emb: torch.Tensor) -> None:
    if image_emb.dim() != 2 or text_emb.dim() != 2:
        raise ValueError(
            f"embeddings must be 2-D: image_emb (N_i, D), text_emb (N_t, D); "
            f"got {tuple(image_emb.shape)} and {tuple(text_emb.shape)}"
        )
    if image_emb.shape[1] != text_emb.shape[1]:
        raise ValueError(f"embedding widths differ: image {image_emb.shape[1]} vs text {text_emb.shape[1]}")
    if image_emb.shape[0] == 0 or text_emb.shape[0] == 0:
        raise ValueError("retrieval needs at least one image and one text embedding")


def _merge(best: TopK, scores: torch.Tensor, indices: torch.Tensor, k: int) -> TopK:
    s = torch.cat([best.scores, scores], dim=1)
    i = torch.cat([best.indices, indices], dim=1)
    top, pos = s.topk(min(k, s.shape[1]), dim=1)
    return TopK(top, i.gather(1, pos))


def _empty(n: int, device: torch.device, dtype: torch.dtype) -> TopK:
    return TopK(
        torch.empty(n, 0, device=device, dtype=dtype),
        torch.empty(n, 0, device=device, dtype=torch.long),
    )


def _rank_torch(image_emb: torch.Tensor, text_emb: torch.Tensor, k: int, tile: int) -> DualRanking:
    n_i, n_t = image_emb.shape[0], text_emb.shape[0]
    k_i2t, k_t2i = min(k, n_t), min(k, n_i)
    i2t_parts = []
    # running top-k images of each text tile, merged as the image tiles stream past
    t2i_parts_by_text = [_empty(min(tile, n_t - t0), text_emb.device, text_emb.dtype) for t0 in range(0, n_t, tile)]
    for i0 in range(0, n_i, tile):
        img = image_emb[i0 : i0 + tile]
        best = _empty(img.shape[0], img.device, img.dtype)
        for c, t0 in enumerate(range(0, n_t, tile)):
            block = img @ text_emb[t0 : t0 + tile].T  # (ci, ct)
            t_idx = torch.arange(t0, t0 + block.shape[1], device=block.device).expand(block.shape[0], -1)
            best = _merge(best, block, t_idx, k_i2t)
            i_idx = torch.arange(i0, i0 + block.shape[0], device=block.device).expand(block.shape[1], -1)
            t2i_parts_by_text[c] = _merge(t2i_parts_by_text[c], block.T, i_idx, k_t2i)
        i2t_parts.append(best)
    return DualRanking(
        TopK(torch.cat([p.scores for p in i2t_parts]), torch.cat([p.indices for p in i2t_parts])),
        TopK(torch.cat([p.scores for p in t2i_parts_by_text]), torch.cat([p.indices for p in t2i_parts_by_text])),
    )


def _rank_faiss(image_emb: torch.Tensor, text_emb: torch.Tensor, k: int) -> DualRanking:
    import faiss  # optional dependency: pip install 'vlp[faiss]'

    img = image_emb.detach().float().cpu().contiguous().numpy()
    txt = text_emb.detach().float().cpu().contiguous().numpy()
    out = []
    for queries, base in ((img, txt), (txt, img)):
        index = faiss.IndexFlatIP(base.shape[1])  # exact inner-product search
        index.add(base)
        scores, idx = index.search(queries, min(k, base.shape[0]))
        out.append(TopK(torch.from_numpy(scores), torch.from_numpy(idx).long()))
    return DualRanking(out[0], out[1])


def rank_dual(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    k: int,
    *,
    normalize: bool = False,
    tile: int = 2048,
    backend: str = "torch",
) -> DualRanking:
    """Top-k by inner product in both directions.

    Args:
        image_emb: (N_i, D); text_emb: (N_t, D).
        k: shortlist length (capped at the number of candidates).
        normalize: L2-normalize first (cosine similarity); dual encoders in vlp
            already return normalized embeddings.
        tile: tile edge of the blocked matrix product (memory ~ tile^2 floats).
        backend: ``torch`` or ``faiss`` (exact ``IndexFlatIP`` on CPU; needs
            ``faiss-cpu``). Results agree up to the order of exact ties.
    """
    _check_emb(image_emb, text_emb)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if normalize:
        image_emb = torch.nn.functional.normalize(image_emb.float(), dim=-1)
        text_emb = torch.nn.functional.normalize(text_emb.float(), dim=-1)
    if backend == "faiss":
        if importlib.util.find_spec("faiss") is None:
            raise RuntimeError("backend='faiss' needs faiss (pip install faiss-cpu, or vlp[faiss])")
        return _rank_faiss(image_emb, text_emb, k)
    if backend != "torch":
        raise ValueError(f"unknown backend {backend!r}; allowed: torch, faiss")
    if tile < 1:
        raise ValueError(f"tile must be >= 1, got {tile}")
    with torch.no_grad():
        return _rank_torch(image_emb, text_emb, k, tile)


def similarity_matrix(image_emb: torch.Tensor, text_emb: torch.Tensor, *, normalize: bool = False) -> torch.Tensor:
    """The full (N_i, N_t) inner-product matrix (what :func:`vlp.metrics.retrieval_metrics` takes)."""
    _check_emb(image_emb, text_emb)
    if normalize:
        image_emb = torch.nn.functional.normalize(image_emb.float(), dim=-1)
        text_emb = torch.nn.functional.normalize(text_emb.float(), dim=-1)
    with torch.no_grad():
        return image_emb @ text_emb.T


def _score_pairs(score_fn: PairScorer, img: torch.Tensor, txt: torch.Tensor, batch_size: int) -> torch.Tensor:
    out = []
    for s in range(0, img.numel(), batch_size):
        i, t = img[s : s + batch_size], txt[s : s + batch_size]
        scores = torch.as_tensor(score_fn(i, t))
        if scores.shape != i.shape:
            raise ValueError(
                f"score_fn returned shape {tuple(scores.shape)} for {i.numel()} pairs; expected ({i.numel()},)"
            )
        out.append(scores.detach().float().cpu())
    return torch.cat(out) if out else torch.empty(0)


def exhaustive(score_fn: PairScorer, n_images: int, n_texts: int, batch_size: int = 1024) -> torch.Tensor:
    """Score every (image, text) pair: returns (n_images, n_texts), calling the scorer
    ``n_images * n_texts`` times in batches of ``batch_size`` pairs (image-major order)."""
    if n_images < 1 or n_texts < 1:
        raise ValueError(f"need at least one image and one text, got {n_images} x {n_texts}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out = torch.empty(n_images * n_texts)
    total = n_images * n_texts
    for s in range(0, total, batch_size):
        flat = torch.arange(s, min(s + batch_size, total))
        out[s : s + flat.numel()] = _score_pairs(score_fn, flat // n_texts, flat % n_texts, batch_size)
    return out.view(n_images, n_texts)


def rerank(
    sim_itc: torch.Tensor,
    score_fn: PairScorer,
    k: int,
    *,
    batch_size: int = 256,
    add_itc: bool = False,
    fill_value: float = float("-inf"),
    dedupe: bool = True,
) -> RerankResult:
    """Two-stage retrieval: ITC shortlist, then pairwise re-scoring, in both directions.

    Args:
        sim_itc: (n_images, n_texts) cheap similarity (e.g. from
            :func:`similarity_matrix`).
        score_fn: expensive pairwise scorer (see module docs).
        k: shortlist length per query (capped at the number of candidates).
        batch_size: pairs per ``score_fn`` call.
        add_itc: add the ITC similarity to the pairwise score (BLIP does;
            ALBEF uses the ITM score alone).
        fill_value: score of pairs outside a shortlist (ALBEF fills -100).
        dedupe: a pair shortlisted in both directions is scored once
            (``num_pairs <= k * (n_images + n_texts)``); without it exactly
            ``min(k, n_t) * n_i + min(k, n_i) * n_t`` pairs are scored, as ALBEF does.
    """
    sim_itc = torch.as_tensor(sim_itc)
    if sim_itc.dim() != 2 or 0 in sim_itc.shape:
        raise ValueError(f"sim_itc must be a non-empty (n_images, n_texts) matrix, got {tuple(sim_itc.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    sim = sim_itc.detach().float().cpu()
    n_i, n_t = sim.shape
    k_i2t, k_t2i = min(k, n_t), min(k, n_i)
    t_short = sim.topk(k_i2t, dim=1).indices  # (n_i, k): texts of each image
    i_short = sim.topk(k_t2i, dim=0).indices  # (k, n_t): images of each text
    i2t_img = torch.arange(n_i).repeat_interleave(k_i2t)
    i2t_txt = t_short.reshape(-1)
    t2i_img = i_short.T.reshape(-1)
    t2i_txt = torch.arange(n_t).repeat_interleave(k_t2i)

    i2t = torch.full((n_i, n_t), fill_value)
    t2i = torch.full((n_i, n_t), fill_value)
    if dedupe:
        keys = torch.cat([i2t_img * n_t + i2t_txt, t2i_img * n_t + t2i_txt]).unique()  # sorted: image-major
        scores = _score_pairs(score_fn, keys // n_t, keys % n_t, batch_size)
        if add_itc:
            scores = scores + sim.view(-1)[keys]
        table = torch.full((n_i * n_t,), fill_value)
        table[keys] = scores
        i2t.view(-1)[i2t_img * n_t + i2t_txt] = table[i2t_img * n_t + i2t_txt]
        t2i.view(-1)[t2i_img * n_t + t2i_txt] = table[t2i_img * n_t + t2i_txt]
        num_pairs = keys.numel()
    else:
        for mat, img, txt in ((i2t, i2t_img, i2t_txt), (t2i, t2i_img, t2i_txt)):
            scores = _score_pairs(score_fn, img, txt, batch_size)
            mat[img, txt] = scores + sim[img, txt] if add_itc else scores
        num_pairs = i2t_img.numel() + t2i_img.numel()
    return RerankResult(i2t, t2i, num_pairs)


__all__ = [
    "DualRanking",
    "PairScorer",
    "RerankResult",
    "TopK",
    "exhaustive",
    "rank_dual",
    "rerank",
    "similarity_matrix",
]
