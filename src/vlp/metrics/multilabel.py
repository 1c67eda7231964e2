"""Multi-label classification metrics (image tagging): mAP, per-label accuracy, exact match, and the
chance level of each."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from vlp.metrics.ranking import average_precision


def multilabel_scores(
    probs: torch.Tensor,
    targets: torch.Tensor,
    valid: torch.Tensor | None = None,
    class_names: Sequence[str] | None = None,
    threshold: float = 0.5,
) -> dict[str, Any]:
    """mAP, per-label accuracy, exact match and their chance levels, in percent.

    ``probs (N, C)`` scores (probabilities for the threshold), ``targets (N, C)`` bool, ``valid
    (N, C)`` bool: which (image, category) pairs count (default all). AP and the majority value of
    a category use its valid rows only; an image is an exact match when every valid label is right.
    """
    targets = targets.bool().cpu()
    probs = probs.detach().double().cpu()
    valid = torch.ones_like(targets) if valid is None else valid.bool().cpu()
    if probs.shape != targets.shape or valid.shape != targets.shape or probs.dim() != 2 or probs.shape[0] == 0:
        raise ValueError(
            f"probs {tuple(probs.shape)}, targets {tuple(targets.shape)}, valid {tuple(valid.shape)}: "
            "expected equal non-empty (N, C)"
        )
    names = list(class_names) if class_names is not None else [str(c) for c in range(targets.shape[1])]
    aps, prevalence, skipped = {}, [], []
    for c, name in enumerate(names):
        rows = valid[:, c]
        if not bool(targets[rows, c].any()):
            skipped.append(name)
            continue
        aps[name] = 100.0 * average_precision(probs[rows, c], targets[rows, c])
        prevalence.append(targets[rows, c].double().mean().item())
    correct = ((probs > threshold) == targets) | ~valid
    positives, counted = (targets & valid).sum(0), valid.sum(0)
    majority = positives * 2 > counted  # ties: answer "absent"
    majority_right = ((targets == majority[None]) | ~valid).all(1)
    total = max(int(counted.sum()), 1)
    return {
        "map": sum(aps.values()) / len(aps) if aps else float("nan"),
        "tag_acc": 100.0 * ((correct & valid).sum().item()) / total,
        "exact_match": 100.0 * correct.all(1).double().mean().item(),
        "n_images": int(targets.shape[0]),
        "n_classes": int(targets.shape[1]),
        "n_scored_classes": len(aps),
        "ap": aps,
        "skipped_classes": skipped,
        "chance": {
            "map": 100.0 * sum(prevalence) / len(prevalence) if prevalence else float("nan"),
            "tag_acc": 100.0 * torch.maximum(positives, counted - positives).sum().item() / total,
            "exact_match": 100.0 * majority_right.double().mean().item(),
        },
    }
