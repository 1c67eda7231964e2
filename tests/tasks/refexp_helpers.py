"""Shared pieces of the referring-expression tests: a tokenizer for their expressions, the reference IoU,
text fields of a Batch, and one hand-worked candidate-choice case that region scoring and candidate-box
scoring must both get right (they share ``refexp.choice_loss``)."""

from __future__ import annotations

import math

import torch

from vlp.text import Tokenizer

EXPRESSIONS = ["the red circle", "the small blue square on the left", "a big star"]


def refexp_tokenizer() -> Tokenizer:
    return Tokenizer.train(EXPRESSIONS * 3, vocab_size=80)


def iou(a, b) -> float:
    """Plain-Python IoU of two xyxy boxes (the reference)."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def text_fields(tok: Tokenizer, texts: list[str]) -> dict:
    t = tok(texts, max_length=12)
    return {"input_ids": t.input_ids, "attention_mask": t.attention_mask.bool(), "token_type_ids": t.token_type_ids}


# image 0: three candidates; image 1: two real candidates and a padded slot that matches the target exactly
BOXES = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]],
                      [[0.0, 0.0, 0.4, 0.4], [0.6, 0.6, 0.9, 0.9], [0.0, 0.0, 0.5, 0.5]]])  # fmt: skip
KEEP = torch.tensor([[True, True, True], [True, True, False]])
TARGET = torch.tensor([[0.45, 0.45, 1.0, 1.0], [0.0, 0.0, 0.5, 0.5]])
SCORES = [[2.0, 0.5, 1.0], [0.3, 0.1, 5.0]]  # the padded slot scores highest but must never win


def candidate_fields() -> dict:
    """The case's candidates and targets as Batch fields."""
    return {"region_boxes": BOXES, "region_mask": KEEP, "target_boxes": TARGET}


# best IoU: image 0 -> candidate 1 (0.83 vs 0.30 and 0.005); image 1 -> candidate 0 (0.64; the pad is ignored)
BEST = [1, 0]


def _ce(logits: list[float], k: int) -> float:
    return math.log(sum(math.exp(v) for v in logits)) - logits[k]


# cross-entropy to the best candidate over the real ones; the arg-max picks candidate 0 in both images,
# whose IoU is 0.005 (image 0) and 0.64 (image 1): accuracy 0.5
EXPECTED_LOSS = (_ce([2.0, 0.5, 1.0], 1) + _ce([0.3, 0.1], 0)) / 2
EXPECTED_PICK = torch.stack([BOXES[0, 0], BOXES[1, 0]])
EXPECTED_ACC = 0.5
