"""Image-text retrieval recall (R@K) on the COCO / Flickr30K Karpathy protocol.

Each image has several captions (``img2txt``) and each caption exactly one image
(``txt2img``). Image -> text: an image is a hit at K if ANY of its captions is
within the top K texts. Text -> image: a caption is a hit at K if its image is
within the top K images. Values are percentages, as ALBEF/BLIP/CLIP papers
report them; ``rsum`` is the sum of the six recalls (0..600).

Ties are broken against the ground truth: a candidate that scores *exactly* as
high as the best ground-truth item is ranked above it. A constant similarity
matrix therefore scores ~0, never a flattering 100.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

RECALL_KS = (1, 5, 10)


def _as_sim(sim: torch.Tensor, name: str) -> torch.Tensor:
    sim = torch.as_tensor(sim)
    if sim.dim() != 2:
        raise ValueError(f"{name} must be a 2-D (n_images, n_texts) matrix, got shape {tuple(sim.shape)}")
    if not sim.is_floating_point():
        sim = sim.float()
    if torch.isnan(sim).any():
        raise ValueError(f"{name} contains NaN scores")
    return sim


def _check_pairs(
    n_images: int,
    n_texts: int,
    txt2img: Sequence[int] | torch.Tensor,
    img2txt: Sequence[Sequence[int]] | None,
) -> tuple[torch.Tensor, list[list[int]]]:
    t2i = torch.as_tensor(txt2img, dtype=torch.long).flatten()
    if t2i.numel() != n_texts:
        raise ValueError(f"txt2img has {t2i.numel()} entries but the similarity matrix has {n_texts} texts (columns)")
    if n_texts and (t2i.min() < 0 or t2i.max() >= n_images):
        bad = t2i[(t2i < 0) | (t2i >= n_images)][0].item()
        raise ValueError(f"txt2img names image {bad}, outside 0..{n_images - 1}")
    if img2txt is None:
        img2txt = [[] for _ in range(n_images)]
        for t, i in enumerate(t2i.tolist()):
            img2txt[i].append(t)
    img2txt = [list(map(int, caps)) for caps in img2txt]
    if len(img2txt) != n_images:
        raise ValueError(f"img2txt has {len(img2txt)} images but the similarity matrix has {n_images} rows")
    for i, caps in enumerate(img2txt):
        if not caps:
            raise ValueError(f"img2txt[{i}] is empty: every image needs at least one caption")
        for t in caps:
            if not 0 <= t < n_texts:
                raise ValueError(f"img2txt[{i}] names text {t}, outside 0..{n_texts - 1}")
            if t2i[t].item() != i:
                raise ValueError(f"img2txt[{i}] lists text {t} but txt2img[{t}] = {t2i[t].item()}")
    return t2i, img2txt


def i2t_ranks(sim: torch.Tensor, img2txt: Sequence[Sequence[int]], chunk: int = 1024) -> torch.Tensor:
    """Rank (0 = top) of the best-scoring ground-truth caption of each image.

    sim: (n_images, n_texts). Returns (n_images,) long: the number of
    non-ground-truth texts scoring >= that image's best ground-truth caption.
    """
    n_images, n_texts = sim.shape
    ranks = torch.empty(n_images, dtype=torch.long)
    for start in range(0, n_images, chunk):
        rows = sim[start : start + chunk]
        gt = torch.zeros(rows.shape, dtype=torch.bool, device=rows.device)
        for r in range(rows.shape[0]):
            gt[r, img2txt[start + r]] = True
        best = rows.masked_fill(~gt, float("-inf")).max(dim=1).values
        ranks[start : start + rows.shape[0]] = ((rows >= best[:, None]) & ~gt).sum(dim=1).cpu()
    return ranks


def t2i_ranks(sim: torch.Tensor, txt2img: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Rank (0 = top) of each caption's image among all images.

    sim: (n_images, n_texts), txt2img: (n_texts,). Returns (n_texts,) long.
    """
    n_images, n_texts = sim.shape
    ranks = torch.empty(n_texts, dtype=torch.long)
    txt2img = txt2img.to(sim.device)
    for start in range(0, n_texts, chunk):
        cols = sim[:, start : start + chunk].T  # (c, n_images)
        gt_idx = txt2img[start : start + cols.shape[0]]
        gt_score = cols.gather(1, gt_idx[:, None])
        above = (cols >= gt_score).sum(dim=1) - 1  # minus the ground truth itself
        ranks[start : start + cols.shape[0]] = above.cpu()
    return ranks


def retrieval_metrics(
    sim: torch.Tensor,
    txt2img: Sequence[int] | torch.Tensor,
    img2txt: Sequence[Sequence[int]] | None = None,
    sim_t2i: torch.Tensor | None = None,
    ks: Sequence[int] = RECALL_KS,
) -> dict[str, float]:
    """Recall@K in both directions, their means and RSUM (all in percent).

    Args:
        sim: (n_images, n_texts) scores, higher = more similar.
        txt2img: (n_texts,) index of each caption's image.
        img2txt: for each image the list of its caption indices; derived from
            ``txt2img`` when omitted (and checked against it when given).
        sim_t2i: optional separate (n_images, n_texts) scores for text -> image
            (two-stage re-ranking produces different scores per direction, see
            :func:`vlp.tasks.retrieval.search.rerank`); defaults to ``sim``.
        ks: the K values; the standard (1, 5, 10) gives the names
            ``i2t_r1, i2t_r5, i2t_r10, t2i_r1, t2i_r5, t2i_r10``.

    Returns:
        dict with ``i2t_r{K}``, ``t2i_r{K}``, ``i2t_mean``, ``t2i_mean``,
        ``r_mean`` (mean of all recalls) and ``rsum`` (their sum).
    """
    sim = _as_sim(sim, "sim")
    n_images, n_texts = sim.shape
    if n_images == 0 or n_texts == 0:
        raise ValueError(f"retrieval needs at least one image and one text, got sim of shape {tuple(sim.shape)}")
    t2i, i2t_lists = _check_pairs(n_images, n_texts, txt2img, img2txt)
    sim_b = sim if sim_t2i is None else _as_sim(sim_t2i, "sim_t2i")
    if sim_b.shape != sim.shape:
        raise ValueError(f"sim_t2i has shape {tuple(sim_b.shape)}, expected {tuple(sim.shape)} (n_images, n_texts)")

    r_i2t = i2t_ranks(sim, i2t_lists)
    r_t2i = t2i_ranks(sim_b, t2i)
    out: dict[str, float] = {}
    for k in ks:
        out[f"i2t_r{k}"] = 100.0 * (r_i2t < k).double().mean().item()
    for k in ks:
        out[f"t2i_r{k}"] = 100.0 * (r_t2i < k).double().mean().item()
    i2t = [out[f"i2t_r{k}"] for k in ks]
    t2i_vals = [out[f"t2i_r{k}"] for k in ks]
    out["i2t_mean"] = sum(i2t) / len(i2t)
    out["t2i_mean"] = sum(t2i_vals) / len(t2i_vals)
    out["r_mean"] = (out["i2t_mean"] + out["t2i_mean"]) / 2
    out["rsum"] = sum(i2t) + sum(t2i_vals)
    return out


def chance_recall(img2txt: Sequence[Sequence[int]], n_texts: int, ks: Sequence[int] = RECALL_KS) -> dict[str, float]:
    """Expected R@K (percent) of a uniformly random ranking, both directions, and their RSUM.

    t2i R@K = K / N_images; i2t R@K = mean over images of the probability that at least one of its c
    captions lands in a random top K of ``n_texts`` (hypergeometric).
    """
    n_images = len(img2txt)
    out: dict[str, float] = {}
    for k in ks:
        hits = 0.0
        for caps in img2txt:
            miss = 1.0  # P(none of the c captions in a random top k of n_texts)
            for j in range(min(k, n_texts)):
                miss *= max(n_texts - len(caps) - j, 0) / (n_texts - j)
            hits += 1.0 - miss
        out[f"i2t_r{k}"] = 100.0 * hits / n_images
    for k in ks:
        out[f"t2i_r{k}"] = 100.0 * min(k, n_images) / n_images
    out["rsum"] = sum(out[f"i2t_r{k}"] + out[f"t2i_r{k}"] for k in ks)
    return out


__all__ = ["RECALL_KS", "chance_recall", "i2t_ranks", "retrieval_metrics", "t2i_ranks"]
