"""Corpus BLEU-1..4 computed the way the COCO caption evaluation's BLEU scorer does.

Inputs are *tokenized* captions: strings whose tokens are separated by
whitespace (see :mod:`vlp.metrics.ptb_tokenize`). Differences from textbook
BLEU (Papineni et al. 2002) that the COCO scorer has, and this one copies:

- the brevity penalty uses, per candidate, the reference length *closest* to
  the candidate length (ties go to the shorter reference), summed over the corpus;
- precisions get a tiny additive smoothing, ``(correct + 1e-15) / (guess + 1e-9)``,
  and so does the length ratio, ``(c + 1e-15) / (r + 1e-9)``; a candidate with
  no n-gram matches therefore scores ~0 instead of raising;
- BLEU-k is the geometric mean of the first k precisions, built as a running
  product in the same order as the reference code so values agree to ~1e-15.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

# names as in pycocoevalcap/bleu/bleu_scorer.py: `tiny` is added to the numerator,
# `small` to the denominator, of both the n-gram precisions and the length ratio
TINY = 1e-15
SMALL = 1e-9


def ngram_counts(words: Sequence[str], n: int) -> Counter:
    """Counts of all 1..n-grams (as tuples) of a token list."""
    counts: Counter = Counter()
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i : i + k])] += 1
    return counts


def _closest_ref_len(ref_lens: Sequence[int], test_len: int) -> int:
    return min((abs(r - test_len), r) for r in ref_lens)[1]


def _bleu_from_stats(correct: Sequence[float], guess: Sequence[float], test_len: float, ref_len: float) -> list[float]:
    scores = []
    running = 1.0
    for k in range(len(correct)):
        running *= (correct[k] + TINY) / (guess[k] + SMALL)
        scores.append(running ** (1.0 / (k + 1)))
    ratio = (test_len + TINY) / (ref_len + SMALL)
    if ratio < 1:
        scores = [s * math.exp(1 - 1 / ratio) for s in scores]
    return scores


def _sentence_stats(candidate: str, references: Sequence[str], n: int) -> tuple[list[int], list[int], int, int]:
    words = candidate.split()
    max_ref: Counter = Counter()
    ref_lens = []
    for ref in references:
        ref_words = ref.split()
        ref_lens.append(len(ref_words))
        for gram, c in ngram_counts(ref_words, n).items():
            max_ref[gram] = max(max_ref[gram], c)
    correct = [0] * n
    for gram, c in ngram_counts(words, n).items():
        correct[len(gram) - 1] += min(max_ref.get(gram, 0), c)
    guess = [max(0, len(words) - k + 1) for k in range(1, n + 1)]
    return correct, guess, len(words), _closest_ref_len(ref_lens, len(words))


def corpus_bleu(
    candidates: Sequence[str], references: Sequence[Sequence[str]], n: int = 4
) -> tuple[list[float], list[list[float]]]:
    """COCO-style corpus BLEU.

    Args:
        candidates: one tokenized candidate per item.
        references: the tokenized references of each item (at least one each).
        n: highest n-gram order.

    Returns:
        ``(corpus, per_item)``: ``corpus[k-1]`` is BLEU-k of the whole corpus
        (clipped counts and lengths summed over items, not an average of
        sentence scores); ``per_item[k-1][i]`` is BLEU-k of item ``i`` alone.
    """
    if len(candidates) != len(references):
        raise ValueError(f"got {len(candidates)} candidates but {len(references)} reference lists")
    if not candidates:
        raise ValueError("BLEU needs at least one candidate")
    tot_correct = [0] * n
    tot_guess = [0] * n
    tot_test = tot_ref = 0
    per_item: list[list[float]] = [[] for _ in range(n)]
    for i, (cand, refs) in enumerate(zip(candidates, references)):
        if isinstance(refs, str) or len(refs) == 0:
            raise ValueError(f"item {i}: references must be a non-empty list of strings")
        correct, guess, test_len, ref_len = _sentence_stats(cand, refs, n)
        item_scores = _bleu_from_stats(correct, guess, test_len, ref_len)
        for k in range(n):
            tot_correct[k] += correct[k]
            tot_guess[k] += guess[k]
            per_item[k].append(item_scores[k])
        tot_test += test_len
        tot_ref += ref_len
    return _bleu_from_stats(tot_correct, tot_guess, tot_test, tot_ref), per_item


__all__ = ["corpus_bleu", "ngram_counts"]
