"""Multitask training of the OFA-style encoder-decoder (``task: {type: seq2seq}``): captions, VQA answers and
referring-expression boxes as one mixed stream of (image, instruction, target) samples and one cross-entropy."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from vlp.config import ConfigError, from_dict
from vlp.objectives.masking import IGNORE
from vlp.objectives.seq2seq import encoder_context, seq2seq_loss, target_labels
from vlp.tasks.seq2seq.data import (
    TASK_NAMES,
    MixedTasks,
    Seq2SeqBatch,
    Seq2SeqCollate,
    instruction_length,
    task_datasets,
)
from vlp.text.locations import location_ids


@dataclass
class Seq2SeqTask:
    """The ``task:`` section of a seq2seq recipe."""

    type: str = "seq2seq"
    tasks: list[str] = field(default_factory=lambda: list(TASK_NAMES))  # mixed in equal shares
    label_smoothing: float = 0.0  # OFA uses 0.1
    bins: int = 0  # written by build_finetuning: the tokenizer's location bins

    def __post_init__(self) -> None:
        unknown = [t for t in self.tasks if t not in TASK_NAMES]
        if unknown or not self.tasks:
            raise ConfigError(f"task.tasks: {unknown or self.tasks!r}: choose from {', '.join(TASK_NAMES)}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"task.label_smoothing: {self.label_smoothing} is not in [0, 1)")


class Seq2SeqModule(nn.Module):
    """``forward(Seq2SeqBatch) -> (loss, logs)``: the token-mean cross-entropy of every target of the batch;
    logs the per-token loss of each task too."""

    def __init__(self, model: nn.Module, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.label_smoothing = label_smoothing

    def forward(self, sb: Seq2SeqBatch) -> tuple[torch.Tensor, dict[str, float]]:
        batch = sb.batch
        context = encoder_context(self.model, batch.input_ids, batch.attention_mask, self.model.image_tokens(batch))
        logits = self.model.decode(sb.decoder_ids, sb.decoder_mask, context)
        labels = target_labels(sb.decoder_ids, sb.decoder_mask)
        loss, per_row = seq2seq_loss(logits, labels, self.label_smoothing)
        logs: dict[str, float] = {}
        with torch.no_grad():
            counts = (labels != IGNORE).sum(1).float()
            for task in sorted(set(sb.tasks)):
                rows = torch.tensor([t == task for t in sb.tasks], device=per_row.device)
                logs[f"loss_{task}"] = float(per_row[rows].sum() / counts[rows].sum().clamp_min(1))
        return loss, logs


class MixedLoader:
    """Batches of the interleaved tasks (this rank's share of them), reshuffled each epoch."""

    def __init__(self, dataset: MixedTasks, collate: Seq2SeqCollate, batch_size: int, rank: int = 0,
                 world_size: int = 1, num_workers: int = 0) -> None:  # fmt: skip
        self.dataset, self.collate, self.batch_size = dataset, collate, batch_size
        # whole rounds of the T interleaved tasks per rank: a stride of world_size alone would give every rank one
        # task whenever world_size is a multiple of T (3 tasks on 3 ranks: captions only on rank 0, ...)
        rounds = len(dataset.tasks)
        self.indices = [i for i in range(len(dataset)) if (i // rounds) % world_size == rank]
        self.num_workers = num_workers
        if len(self.indices) < batch_size:
            raise ConfigError(
                f"seq2seq: {len(self.indices)} samples per rank, fewer than train.batch_size={batch_size}"
            )

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.indices) // self.batch_size

    def __iter__(self) -> Iterator[Seq2SeqBatch]:
        loader = DataLoader(Subset(self.dataset, self.indices), batch_size=self.batch_size, shuffle=False,
                            collate_fn=self.collate, num_workers=self.num_workers, drop_last=True)  # fmt: skip
        return iter(loader)


def check_vocabulary(model: Any, tokenizer: Any) -> None:
    """The model's text and decoder vocabularies must hold every tokenizer id, location tokens included."""
    for part in ("text", "decoder"):
        module = getattr(model, part, None)
        size = module.embeddings.vocab_size if module is not None else None
        if size is not None and size < tokenizer.vocab_size:
            raise ConfigError(
                f"model.{part}.vocab_size={size} but the tokenizer (with its location tokens) has "
                f"{tokenizer.vocab_size} ids; set model.{part}.vocab_size: {tokenizer.vocab_size}"
            )


def check_instruction_length(model: Any, tokenizer: Any, max_text_len: int) -> None:
    """The longest instruction (``max_text_len`` of text + the refexp template) must fit the encoder's positions."""
    need = instruction_length(tokenizer, max_text_len)
    text = getattr(model, "text", None)
    have = getattr(getattr(text, "embeddings", None), "max_positions", None)
    if have is not None and have < need:
        raise ConfigError(
            f"data.max_text_len={max_text_len} plus the refexp instruction's {need - max_text_len} template pieces "
            f"= {need} tokens, more than model.text.max_positions={have}; raise model.text.max_positions to {need} "
            "or lower data.max_text_len"
        )


def build_finetuning(
    task: dict[str, Any], recipe: Any, model: Any, tokenizer: Any, *, rank: int = 0, world_size: int = 1
) -> tuple[Any, Any]:
    """``(Seq2SeqModule, mixed loader)`` for ``vlp finetune``; writes the tokenizer's bin count into the task."""
    opts = from_dict(Seq2SeqTask, task, "task")
    try:
        bins = location_ids(tokenizer, opts.bins or None)
    except ValueError as err:
        raise ConfigError(f"task.bins / tokenizer: {err}") from None
    check_vocabulary(model, tokenizer)
    check_instruction_length(model, tokenizer, recipe.data.max_text_len)
    datasets = task_datasets(recipe.data, opts.tasks, "train", tokenizer, train=True)
    mixed = MixedTasks(datasets, seed=recipe.train.seed)
    collate = Seq2SeqCollate(tokenizer, bins, recipe.data.max_text_len)
    loader = MixedLoader(mixed, collate, recipe.train.batch_size, rank, world_size, recipe.train.num_workers)
    task["bins"] = len(bins)
    return Seq2SeqModule(model, opts.label_smoothing), loader


__all__ = [
    "MixedLoader",
    "Seq2SeqModule",
    "Seq2SeqTask",
    "build_finetuning",
    "check_instruction_length",
    "check_vocabulary",
]
