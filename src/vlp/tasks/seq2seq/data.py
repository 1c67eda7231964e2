"""Samples of the OFA-style multitask training: every task as (image, instruction, target).

OFA's instructions (Wang et al. 2022): captioning ``what does the image describe?`` -> the caption; VQA
``{question}`` -> the answer most annotators gave; referring expressions ``which region does the text
"{expression}" describe?`` -> the box as four location tokens. The three datasets are interleaved sample
by sample (caption, question, expression, caption, ...), each shuffled per epoch and cycled, so every
batch mixes the tasks in equal shares whatever their sizes.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset

from vlp.config import ConfigError
from vlp.data import build_dataset
from vlp.data.batch import Batch
from vlp.data.skipping import Skipped
from vlp.data.transforms import swap_left_right
from vlp.text.locations import box_to_ids

TASK_NAMES = ("caption", "vqa", "refexp")
# the ShapesWorld format each task reads
SHAPES_FORMATS = {"caption": "captions", "vqa": "vqa", "refexp": "refcoco"}
CAPTION_INSTRUCTION = "what does the image describe?"


def refexp_instruction(expression: str) -> str:
    return f'which region does the text "{expression}" describe?'


def instruction_length(tokenizer: Any, max_text_len: int) -> int:
    """The token budget of an instruction: ``max_text_len`` for the task's own text (the question, the
    expression) plus the word pieces the refexp template around it takes (the longest template).

    Counting the template against ``max_text_len`` cut the expression: a small tokenizer that never saw
    "which region does the text ... describe?" spells the template out piece by piece (29 pieces with the
    taxonomy's 400-word ShapesWorld tokenizer), which left the expression 2 of 24 tokens ("the little")."""
    template = tokenizer([refexp_instruction("")], max_length=4096).attention_mask
    return max_text_len + int(template.sum()) - 2  # the template's [CLS] and [SEP] are already in max_text_len


def instruction(task: str, sample: dict[str, Any]) -> str:
    """The encoder text of ``sample`` for ``task``."""
    if task == "caption":
        return CAPTION_INSTRUCTION
    if task == "vqa":
        return sample["text"]
    return refexp_instruction(sample["text"])


def answer_of(meta: dict[str, Any]) -> str:
    """The answer most annotators gave (ties: the first given), VQAv2's ``multiple_choice_answer`` rule."""
    answers = meta.get("answers") or []
    if not answers:
        raise ConfigError(f"seq2seq: VQA sample {meta.get('question_id', '?')} has no answers")
    answer = Counter(answers).most_common(1)[0][0]
    # a horizontal flip swapped left and right in the question; the answer follows (as VQA fine-tuning does)
    return swap_left_right(answer) if meta.get("flipped") else answer


class MixedTasks(Dataset):
    """Interleaves datasets ``{task: dataset}`` (tasks of :data:`TASK_NAMES`); item ``i`` is task ``i % T``.

    Items are ``(task, sample)``; a dataset's ``Skipped`` record comes through as it is.
    """

    def __init__(self, datasets: dict[str, Any], seed: int = 0) -> None:
        unknown = [t for t in datasets if t not in TASK_NAMES]
        empty = [t for t, d in datasets.items() if len(d) == 0]
        if unknown or empty or not datasets:
            raise ConfigError(f"seq2seq: tasks {unknown or empty or '[]'} are unknown or empty; expected samples "
                              f"of {', '.join(TASK_NAMES)}")  # fmt: skip
        self.tasks = list(datasets)
        self.datasets = datasets
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        for d in self.datasets.values():
            if callable(getattr(d, "set_epoch", None)):
                d.set_epoch(epoch)
        rng = random.Random(self.seed * 1000 + epoch)
        self.orders = {t: rng.sample(range(len(d)), len(d)) for t, d in self.datasets.items()}

    def __len__(self) -> int:
        return len(self.tasks) * max(len(d) for d in self.datasets.values())

    def __getitem__(self, i: int) -> tuple[str, Any]:
        task = self.tasks[i % len(self.tasks)]
        order = self.orders[task]
        return task, self.datasets[task][order[(i // len(self.tasks)) % len(order)]]


@dataclass
class Seq2SeqBatch:
    """Encoder input (``batch``: images + instruction ids) and decoder ids ``[CLS] target [SEP]`` ``(B, T)``."""

    batch: Batch
    decoder_ids: torch.Tensor
    decoder_mask: torch.Tensor
    tasks: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return self.decoder_ids.shape[0]

    def to(self, device: Any, non_blocking: bool = False) -> Seq2SeqBatch:
        return Seq2SeqBatch(self.batch.to(device, non_blocking), self.decoder_ids.to(device, non_blocking=non_blocking),
                            self.decoder_mask.to(device, non_blocking=non_blocking), self.tasks)  # fmt: skip

    def pin_memory(self) -> Seq2SeqBatch:
        return Seq2SeqBatch(self.batch.pin_memory(), self.decoder_ids.pin_memory(), self.decoder_mask.pin_memory(),
                            self.tasks)  # fmt: skip


def decoder_rows(tokenizer: Any, tasks: list[str], targets: list[Any], bins: torch.Tensor, max_len: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Decoder ids and keep-mask ``(B, T)``: ``[CLS] target [SEP]``; a box target (normalized xyxy) is its four
    location tokens, a text target its word pieces (truncated to ``max_len``)."""
    rows: list[list[int]] = []
    texts = [t for task, t in zip(tasks, targets) if task != "refexp"]
    encoded = iter(tokenizer(texts, max_length=max_len).input_ids.tolist() if texts else [])
    for task, target in zip(tasks, targets):
        if task == "refexp":
            rows.append([tokenizer.cls_id, *box_to_ids(torch.as_tensor(target), bins).tolist(), tokenizer.sep_id])
        else:
            rows.append([int(i) for i in next(encoded) if int(i) != tokenizer.pad_id])
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), tokenizer.pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = True
    return ids, mask


class Seq2SeqCollate:
    """``[(task, sample)] -> Seq2SeqBatch``; ``Skipped`` (unreadable) samples are left out."""

    def __init__(self, tokenizer: Any, bins: torch.Tensor, max_text_len: int) -> None:
        self.tokenizer, self.bins, self.max_text_len = tokenizer, bins, max_text_len
        self.instruction_len = instruction_length(tokenizer, max_text_len)

    def __call__(self, items: list[tuple[str, Any]]) -> Seq2SeqBatch:
        kept = [(t, s) for t, s in items if not isinstance(s, Skipped)]
        if not kept:
            raise ConfigError(f"seq2seq: every sample of a batch was unreadable, e.g. {items[0][1]}")
        tasks = [t for t, _ in kept]
        samples = [s for _, s in kept]
        targets = [s["text"] if t == "caption" else answer_of(s["meta"]) if t == "vqa" else s["target_box"]
                   for t, s in kept]  # fmt: skip
        enc = self.tokenizer([instruction(t, s) for t, s in kept], max_length=self.instruction_len)
        dec_ids, dec_mask = decoder_rows(self.tokenizer, tasks, targets, self.bins, self.max_text_len)
        batch = Batch(input_ids=enc.input_ids, attention_mask=enc.attention_mask.bool(),
                      images=torch.stack([s["image"] for s in samples]),
                      meta=[{**s["meta"], "task": t} for t, s in kept])  # fmt: skip
        return Seq2SeqBatch(batch, dec_ids, dec_mask, tasks)


def task_datasets(data: Any, tasks: list[str], split: str, tokenizer: Any, train: bool) -> dict[str, Any]:
    """``{task: dataset}`` of ShapesWorld's caption, VQA and RefCOCO files under the recipe's data section."""
    if data.type != "shapesworld":
        raise ConfigError(
            f"data.type: {data.type!r}; the seq2seq task mixes ShapesWorld's caption, VQA and RefCOCO files "
            "(data.type: shapesworld), which one data section can name"
        )
    out = {}
    for task in tasks:
        config = dataclasses.replace(data, options={**dict(data.options), "format": SHAPES_FORMATS[task]})
        out[task] = build_dataset(config, split, tokenizer, train=train, shuffle=False)
    return out


__all__ = [
    "CAPTION_INSTRUCTION",
    "SHAPES_FORMATS",
    "TASK_NAMES",
    "MixedTasks",
    "Seq2SeqBatch",
    "Seq2SeqCollate",
    "answer_of",
    "decoder_rows",
    "instruction",
    "instruction_length",
    "refexp_instruction",
    "task_datasets",
]
