"""The ``Batch``: what every loader yields and every model consumes.

Fields are batch-first tensors; masks are boolean keep-masks (``True`` = real).
Optional fields are ``None`` when a dataset does not provide them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Batch:
    # text: [CLS] w1..wn [SEP] token ids, padded
    input_ids: torch.Tensor | None = None  # (B, L) long
    attention_mask: torch.Tensor | None = None  # (B, L) bool
    token_type_ids: torch.Tensor | None = None  # (B, L) long
    word_ids: torch.Tensor | None = None  # (B, L) long; word index of each sub-word, -1 for specials/padding
    # pixels for patch and grid encoders
    images: torch.Tensor | None = None  # (B, 3, H, W) float, normalized
    # precomputed or box-pooled regions
    region_features: torch.Tensor | None = None  # (B, R, F) float
    region_boxes: torch.Tensor | None = None  # (B, R, 4) float, (x1, y1, x2, y2) normalized to [0, 1]
    region_mask: torch.Tensor | None = None  # (B, R) bool
    region_class_probs: torch.Tensor | None = None  # (B, R, C) detector class distribution (MRC-KL)
    # OSCAR object tags: class names tokenized by the text tokenizer
    tag_ids: torch.Tensor | None = None  # (B, T) long
    tag_mask: torch.Tensor | None = None  # (B, T) bool
    # which image each caption belongs to (several captions may share an image)
    image_index: torch.Tensor | None = None  # (B,) long
    # task targets
    answer_targets: torch.Tensor | None = None  # (B, A) soft VQA scores
    target_boxes: torch.Tensor | None = None  # (B, 4) referring-expression box, normalized xyxy
    labels: torch.Tensor | None = None  # (B,) class labels
    # bookkeeping that never goes to the device: sample ids, raw captions, answers, ...
    meta: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                return value.shape[0]
        return len(self.meta)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """A copy with every tensor moved to ``device``."""
        moved = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                value = value.to(device, non_blocking=non_blocking)
            moved[f.name] = value
        return Batch(**moved)

    def pin_memory(self) -> Batch:
        """Called by ``DataLoader(pin_memory=True)``."""
        pinned = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            pinned[f.name] = value.pin_memory() if isinstance(value, torch.Tensor) else value
        return Batch(**pinned)

    def replace(self, **changes: Any) -> Batch:
        return dataclasses.replace(self, **changes)
