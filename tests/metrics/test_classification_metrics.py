"""Confusion matrix, per-class recall and its mean, worked by hand."""

from __future__ import annotations

import pytest
import torch

from vlp.metrics.classification import (
    confusion_matrix,
    mean_class_accuracy,
    mean_per_class_recall,
    per_class_recall,
)


def test_confusion_matrix_rows_are_true_classes_and_recall_by_hand():
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
    pred = torch.tensor([0, 0, 1, 2, 1, 0, 2, 2, 2, 2])
    matrix = confusion_matrix(pred, labels, 4)  # class 3 has no image and is never predicted
    assert matrix.tolist() == [[2, 1, 1, 0], [1, 1, 0, 0], [0, 0, 4, 0], [0, 0, 0, 0]]
    assert per_class_recall(matrix) == [50.0, 50.0, 100.0, None]
    # mean over the classes with images: (50 + 50 + 100) / 3, not over all 4 classes; top-1 would be 70
    assert mean_per_class_recall(matrix) == pytest.approx(200 / 3)
    assert mean_per_class_recall(matrix) == pytest.approx(mean_class_accuracy(pred, labels))


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\), got \[0, 2\]"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 2]), 2)
    with pytest.raises(ValueError, match="must match"):
        confusion_matrix(torch.tensor([0]), torch.tensor([0, 1]), 2)
    with pytest.raises(ValueError, match="holds no images"):
        mean_per_class_recall(torch.zeros(2, 2, dtype=torch.long))
