"""Single-label classification metrics: top-k accuracy, mean per-class accuracy, top-1 accuracy."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """``{"top1": .., "top5": ..}`` in percent; ``k`` is capped at the number of classes.

    logits ``(N, C)``, labels ``(N,)``. Ties count against the label (a rank counts the classes
    scoring strictly higher), so a constant classifier is not credited with every class.
    """
    if logits.shape[0] != labels.shape[0] or logits.shape[0] == 0:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} must be non-empty and match")
    own = logits.gather(1, labels[:, None])
    rank = (logits > own).sum(1) + (logits == own).sum(1) - 1  # ties are placed ahead of the label
    return {f"top{k}": 100.0 * (rank < min(k, logits.shape[1])).double().mean().item() for k in ks}


def mean_class_accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over the classes present in ``labels`` of their top-1 accuracy (percent)."""
    per = [(pred[labels == c] == c).double().mean().item() for c in labels.unique().tolist()]
    return 100.0 * sum(per) / len(per)


def accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent of predicted class indices ``pred (N,)`` against ``labels (N,)``."""
    return 100.0 * (pred == labels).double().mean().item()


__all__ = ["accuracy", "mean_class_accuracy", "topk_accuracy"]
