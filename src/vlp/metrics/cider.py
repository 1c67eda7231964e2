"""CIDEr-D (Vedantam et al. 2015) as the COCO caption evaluation computes it.

For every item, candidate and references become tf-idf vectors of their 1..4
grams; idf uses the document frequency of each n-gram over the *references of
the evaluated set* (an item counts once however many of its references contain
the n-gram), ``idf = log(N) - log(max(1, df))`` with N the number of items.
Per n, the score against one reference is the cosine similarity with the
candidate's tf-idf values clipped by the reference's (``min(c, r) * r``, the
"-D" de-gaming), times the Gaussian length penalty ``exp(-delta^2 / (2 sigma^2))``
with sigma = 6. Scores are averaged over n and over references and multiplied
by 10; the corpus score is the mean over items.

Like the reference code, ``delta`` is the difference of the *bigram* counts of
the two sentences (the same as the difference of their lengths whenever both
have at least one word), and an evaluation of a single item gives 0 (idf is 0
when N = 1).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence

from vlp.metrics.bleu import ngram_counts


def _tfidf(counts: Counter, df: dict, log_n: float, n: int) -> tuple[list[dict], list[float], int]:
    vec: list[dict] = [{} for _ in range(n)]
    norm = [0.0] * n
    bigrams = 0
    for gram, tf in counts.items():
        k = len(gram) - 1
        weight = float(tf) * (log_n - math.log(max(1.0, df.get(gram, 0.0))))
        vec[k][gram] = weight
        norm[k] += weight * weight
        if k == 1:
            bigrams += tf
    return vec, [math.sqrt(v) for v in norm], bigrams


def _similarity(
    hyp: tuple[list[dict], list[float], int], ref: tuple[list[dict], list[float], int], n: int, sigma: float
) -> list[float]:
    vec_h, norm_h, len_h = hyp
    vec_r, norm_r, len_r = ref
    delta = float(len_h - len_r)
    penalty = math.e ** (-(delta**2) / (2 * sigma**2))
    vals = []
    for k in range(n):
        val = 0.0
        for gram, w in vec_h[k].items():
            r = vec_r[k].get(gram, 0.0)
            val += min(w, r) * r
        if norm_h[k] != 0 and norm_r[k] != 0:
            val /= norm_h[k] * norm_r[k]
        vals.append(val * penalty)
    return vals


def cider_d(
    candidates: Sequence[str], references: Sequence[Sequence[str]], n: int = 4, sigma: float = 6.0
) -> tuple[float, list[float]]:
    """CIDEr-D of tokenized candidates against tokenized references.

    Returns ``(corpus_score, per_item_scores)``; the document frequencies come
    from ``references``, so the value depends on the whole evaluated set.
    """
    if len(candidates) != len(references):
        raise ValueError(f"got {len(candidates)} candidates but {len(references)} reference lists")
    if not candidates:
        raise ValueError("CIDEr needs at least one candidate")
    ref_counts = []
    df: dict = defaultdict(float)
    for i, refs in enumerate(references):
        if isinstance(refs, str) or len(refs) == 0:
            raise ValueError(f"item {i}: references must be a non-empty list of strings")
        counts = [ngram_counts(r.split(), n) for r in refs]
        ref_counts.append(counts)
        for gram in {g for c in counts for g in c}:
            df[gram] += 1.0
    log_n = math.log(float(len(references)))
    scores = []
    for cand, counts in zip(candidates, ref_counts):
        hyp = _tfidf(ngram_counts(cand.split(), n), df, log_n, n)
        total = [0.0] * n
        for rc in counts:
            for k, v in enumerate(_similarity(hyp, _tfidf(rc, df, log_n, n), n, sigma)):
                total[k] += v
        scores.append(sum(total) / n / len(counts) * 10.0)
    return sum(scores) / len(scores), scores


__all__ = ["cider_d"]
