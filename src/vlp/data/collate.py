"""Samples -> :class:`vlp.data.batch.Batch`: padded text, padded regions and boxes, masks.

``collate(samples, tokenizer, max_text_len)`` takes the sample dicts that
:class:`vlp.data.dataset.SampleProcessor` produces. The tokenizer is any object
with the vlp tokenizer's call signature, ``tok(texts, max_length=...,
padding="longest") -> TokenizedText`` (input_ids, attention_mask,
token_type_ids, word_ids), and ``tok.encode_tags(tag_lists, max_length)`` for
object tags. Regions and boxes are padded to the largest count in the batch
with zeros and a ``False`` mask.

:class:`LoaderCollate` is what the DataLoader runs: it sets the
:class:`Skipped` records aside (their counts travel back to the main process
in the :class:`LoaderItem`) and collates the rest.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate

from vlp.data.batch import Batch
from vlp.data.skipping import Skipped


def pad_sample_regions(samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack per-sample (R_i, ...) region tensors into (B, R, ...) with a (B, R) keep-mask."""
    counts = [len(s["region_boxes"]) if "region_boxes" in s else 0 for s in samples]
    size = max(counts)
    batch = len(samples)
    boxes = torch.zeros(batch, size, 4)
    mask = torch.zeros(batch, size, dtype=torch.bool)
    out: dict[str, torch.Tensor] = {"region_boxes": boxes, "region_mask": mask}
    with_features = [s for s in samples if "region_features" in s]
    features = None
    if with_features:
        dim = with_features[0]["region_features"].shape[-1]
        features = out["region_features"] = torch.zeros(batch, size, dim)
    with_probs = [s for s in samples if "region_class_probs" in s]
    probs = None
    if with_probs:
        classes = with_probs[0]["region_class_probs"].shape[-1]
        probs = out["region_class_probs"] = torch.zeros(batch, size, classes)
    for i, (sample, count) in enumerate(zip(samples, counts)):
        if not count:
            continue
        boxes[i, :count] = sample["region_boxes"]
        mask[i, :count] = True
        if features is not None and "region_features" in sample:
            if sample["region_features"].shape[-1] != features.shape[-1]:
                raise ValueError(
                    f"region feature sizes differ within a batch: {sample['region_features'].shape[-1]} "
                    f"vs {features.shape[-1]} (sample {sample['meta']})"
                )
            features[i, :count] = sample["region_features"]
        if probs is not None and "region_class_probs" in sample:
            probs[i, :count] = sample["region_class_probs"]
    return out


def _image_size(image: Any) -> tuple[int, int]:
    return tuple(image.shape[:2]) if isinstance(image, np.ndarray) else tuple(image.shape[-2:])


def collate(
    samples: list[dict[str, Any]], tokenizer: Any = None, max_text_len: int = 40, num_answers: int | None = None
) -> Batch:
    """Batch sample dicts (see :mod:`vlp.data.dataset`) into a :class:`Batch`.

    Args:
        samples: the processed samples (no :class:`Skipped` records).
        tokenizer: tokenizes ``text`` (captions, questions, expressions) and
            ``tags``; None leaves the token fields empty (the texts stay in meta).
        max_text_len: token budget including [CLS] and [SEP].
        num_answers: size of the VQA answer vocabulary (the width of
            ``answer_targets``); required when samples carry answer targets.
    """
    meta = [dict(s.get("meta", {})) for s in samples]
    fields: dict[str, Any] = {"meta": meta}
    if not samples:
        return Batch(**fields)
    if any("image" in s for s in samples):
        # (3, H, W) float tensors, or (H, W, 3) uint8 arrays from a worker's unnormalized batch (LoaderCollate)
        sizes = [_image_size(s["image"]) if "image" in s else None for s in samples]
        if len(set(sizes) - {None}) > 1:  # an eval rule that keeps the aspect ratio (transform.eval_resize: vilt)
            named = ", ".join(f"{size} ({m.get('image', '?')})" for size, m in zip(sizes, meta) if size is not None)
            raise ValueError(
                f"images of different sizes in one batch: {named} (height, width); the transform keeps each "
                "image's aspect ratio (transform.eval_resize vilt or none): evaluate with batch size 1, or set "
                "eval_resize: exact"
            )
        # default_collate = torch.stack, but in a DataLoader worker it stacks straight into shared memory:
        # torch.stack would allocate the batch and pickling would copy it into shared memory again
        images = [s["image"] for s in samples]
        if isinstance(images[0], np.ndarray):
            with warnings.catch_warnings():  # PIL's pixels are read-only; they are only read (copied by the stack)
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                images = [torch.from_numpy(image) for image in images]
        fields["images"] = default_collate(images)
    if all("text" in s for s in samples):
        texts = [s["text"] for s in samples]
        for m, text in zip(meta, texts):
            m["text"] = text
        if tokenizer is not None:
            tokens = tokenizer(texts, max_length=max_text_len, padding="longest")
            fields.update(
                input_ids=tokens.input_ids,
                attention_mask=tokens.attention_mask.bool(),
                token_type_ids=tokens.token_type_ids,
                word_ids=tokens.word_ids,
            )
    if any("region_boxes" in s for s in samples):
        fields.update(pad_sample_regions(samples))
    if any("tags" in s for s in samples):
        tag_lists = [list(s.get("tags", [])) for s in samples]
        for m, tags in zip(meta, tag_lists):
            m["tags"] = tags
        if tokenizer is not None and hasattr(tokenizer, "encode_tags"):
            tags = tokenizer.encode_tags(tag_lists, max_length=max_text_len)
            fields.update(tag_ids=tags.input_ids, tag_mask=tags.attention_mask.bool())
    if all("image_index" in s for s in samples):
        fields["image_index"] = torch.tensor([int(s["image_index"]) for s in samples], dtype=torch.long)
    if any("answer_targets" in s for s in samples):
        if num_answers is None:
            raise ValueError("samples carry VQA answer targets: collate needs num_answers (the vocabulary size)")
        targets = torch.zeros(len(samples), num_answers)
        for i, sample in enumerate(samples):
            for index, score in sample.get("answer_targets", {}).items():
                targets[i, index] = score
        fields["answer_targets"] = targets
    if all("target_box" in s for s in samples):
        fields["target_boxes"] = torch.stack([s["target_box"] for s in samples])
    return Batch(**fields)


@dataclass
class LoaderItem:
    """What a DataLoader worker hands back: the batch (None if every sample was bad),
    the skipped records, and how many dataset positions the batch consumed. A worker's batch may carry its
    ``images`` still as (B, H, W, 3) uint8, for the receiving process to normalize (a quarter of the bytes
    of float32 through shared memory)."""

    batch: Batch | None
    skips: list[Skipped] = field(default_factory=list)
    consumed: int = 0

    def pin_memory(self) -> LoaderItem:
        return LoaderItem(self.batch.pin_memory() if self.batch is not None else None, self.skips, self.consumed)


class LoaderCollate:
    """The DataLoader's ``collate_fn``: set skipped samples aside, collate the rest."""

    def __init__(self, tokenizer: Any = None, max_text_len: int = 40, num_answers: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.max_text_len = max_text_len
        self.num_answers = num_answers

    def __call__(self, items: list[dict[str, Any] | Skipped]) -> LoaderItem:
        skips = [x for x in items if isinstance(x, Skipped)]
        samples = [x for x in items if not isinstance(x, Skipped)]
        batch = collate(samples, self.tokenizer, self.max_text_len, self.num_answers) if samples else None
        return LoaderItem(batch, skips, len(items))
