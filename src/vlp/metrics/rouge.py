"""ROUGE-L (Lin 2004) with beta = 1.2, as the COCO caption evaluation computes it.

Per item: for each reference, the longest common subsequence (LCS) of tokens
gives precision ``lcs / len(candidate)`` and recall ``lcs / len(reference)``;
the best precision and the best recall are taken *separately* over the
references (possibly from different ones) and combined as
``(1 + b^2) P R / (R + b^2 P)``. The corpus score is the mean over items.
Tokens are split on single spaces, like the reference code.
"""

from __future__ import annotations

from collections.abc import Sequence

BETA = 1.2


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists (O(len(a) * len(b)))."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, start=1):
            cur[j] = prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1])
        prev = cur
    return prev[-1]


def rouge_l_sentence(candidate: str, references: Sequence[str], beta: float = BETA) -> float:
    """ROUGE-L F-score of one tokenized candidate against its tokenized references."""
    if isinstance(references, str) or len(references) == 0:
        raise ValueError("references must be a non-empty list of strings")
    cand = candidate.split(" ")
    precisions, recalls = [], []
    for ref in references:
        ref_tokens = ref.split(" ")
        lcs = lcs_length(ref_tokens, cand)
        precisions.append(lcs / len(cand))
        recalls.append(lcs / len(ref_tokens))
    p, r = max(precisions), max(recalls)
    if p == 0 or r == 0:
        return 0.0
    return ((1 + beta**2) * p * r) / (r + beta**2 * p)


def rouge_l(
    candidates: Sequence[str], references: Sequence[Sequence[str]], beta: float = BETA
) -> tuple[float, list[float]]:
    """Mean ROUGE-L over items; returns ``(corpus_score, per_item_scores)``."""
    if len(candidates) != len(references):
        raise ValueError(f"got {len(candidates)} candidates but {len(references)} reference lists")
    if not candidates:
        raise ValueError("ROUGE-L needs at least one candidate")
    scores = []
    for i, (cand, refs) in enumerate(zip(candidates, references)):
        try:
            scores.append(rouge_l_sentence(cand, refs, beta))
        except ValueError as err:
            raise ValueError(f"item {i}: {err}") from None
    return sum(scores) / len(scores), scores


__all__ = ["lcs_length", "rouge_l", "rouge_l_sentence"]
