"""Single-label classification metrics: top-k accuracy, mean per-class accuracy (= mean per-class recall),
top-1 accuracy, per-class recall and the confusion matrix."""

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


def confusion_matrix(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(C, C)`` counts: row = true class, column = predicted class (scikit-learn's orientation)."""
    if pred.shape != labels.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and labels {tuple(labels.shape)} must match")
    for name, values in (("pred", pred), ("labels", labels)):
        if values.numel() and (int(values.min()) < 0 or int(values.max()) >= num_classes):
            raise ValueError(f"{name} must lie in [0, {num_classes}), got [{int(values.min())}, {int(values.max())}]")
    flat = labels.long() * num_classes + pred.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def per_class_recall(matrix: torch.Tensor) -> list[float | None]:
    """Recall (percent) of each class of a confusion matrix; None for a class without images."""
    totals = matrix.sum(1)
    return [100.0 * float(matrix[c, c]) / float(totals[c]) if totals[c] else None for c in range(matrix.shape[0])]


def mean_per_class_recall(matrix: torch.Tensor) -> float:
    """Mean over the classes that have images of their recall (clip_benchmark's ``mean_per_class_recall``)."""
    recalls = [r for r in per_class_recall(matrix) if r is not None]
    if not recalls:
        raise ValueError("mean per-class recall: the confusion matrix holds no images")
    return sum(recalls) / len(recalls)


def accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent of predicted class indices ``pred (N,)`` against ``labels (N,)``."""
    return 100.0 * (pred == labels).double().mean().item()


__all__ = [
    "accuracy",
    "confusion_matrix",
    "mean_class_accuracy",
    "mean_per_class_recall",
    "per_class_recall",
    "topk_accuracy",
]
