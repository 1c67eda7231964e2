"""Average precision of a ranking: the per-class metric behind multi-label mAP (image tagging)."""

from __future__ import annotations

from typing import Any

import torch


def average_precision(scores: Any, targets: Any) -> float:
    """Non-interpolated average precision of ``scores (N,)`` against bool ``targets (N,)``, in [0, 1].

    The mean over positives of the precision at their rank in decreasing score order. Tied scores
    are one block (every item of the block is ranked at once, as sklearn does), so a constant
    score gets the prevalence. Needs at least one positive.
    """
    scores = torch.as_tensor(scores, dtype=torch.float64).detach().cpu()
    targets = torch.as_tensor(targets).detach().cpu().bool()
    if scores.dim() != 1 or scores.shape != targets.shape or scores.numel() == 0:
        raise ValueError(f"scores {tuple(scores.shape)} and targets {tuple(targets.shape)}: expected equal (N,), N > 0")
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("scores: contain NaN or inf")
    if not bool(targets.any()):
        raise ValueError("targets: no positive, average precision is undefined")
    order = torch.argsort(scores, descending=True, stable=True)
    ranked, hits = scores[order], targets[order].double()
    true_pos = hits.cumsum(0)
    ends = torch.ones_like(hits, dtype=torch.bool)  # last position of each run of equal scores
    ends[:-1] = ranked[1:] != ranked[:-1]
    tp_at = true_pos[ends]
    precision = tp_at / (torch.nonzero(ends).squeeze(1) + 1).double()
    gained = torch.diff(tp_at, prepend=tp_at.new_zeros(1))  # positives that each block adds
    return float((gained * precision).sum() / true_pos[-1])
