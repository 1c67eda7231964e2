"""Fine-tuning for VQA: the vqa head with soft-target BCE (classify) or BLIP's weighted answer LM
loss on the decoder (generate)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from vlp.config import ConfigError, from_dict
from vlp.data import build_loader
from vlp.data.batch import Batch
from vlp.data.transforms import swap_left_right
from vlp.objectives.base import logs_to_floats
from vlp.tasks.vqa.decode import answer_sequences, check_generative, question_context, repeat_context, token_losses
from vlp.tasks.vqa.head import answer_logits, dataset_vocab, ensure_vqa_head


@dataclass
class VQATask:
    """The ``task:`` section of a VQA recipe."""

    type: str = "vqa"
    mode: Literal["classify", "generate"] = "classify"
    style: Literal["prefix", "blip"] = "prefix"  # generate: how the decoder sees the question (vqa.decode)
    label_smoothing: float = 0.0  # generate: LM label smoothing
    hidden: int = 0  # classify: hidden width of a new vqa head (0 = 2 x pooled width)
    # written by build_finetuning: the answer vocabulary the vqa head's outputs stand for
    answer_vocab: list[str] = field(default_factory=list)


class VQAClassifier(nn.Module):
    """Fine-tuning module: ``forward(batch) -> (loss, logs)`` with the soft-target BCE of :mod:`vlp.tasks.vqa`.

    Logs ``vqa_score``: the mean soft score of the arg-max answer (the training VQA score ViLT logs).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if "vqa" not in model.heads:
            raise ConfigError("VQA classification needs a vqa head (model.heads.vqa: {num_answers: N})")
        self.model = model

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        targets = batch.answer_targets
        if targets is None:
            raise ConfigError("VQA fine-tuning: the batch has no answer_targets (data must be VQA with annotations)")
        logits = answer_logits(self.model, batch).float()
        if logits.shape != targets.shape:
            raise ConfigError(f"vqa head gives {logits.shape[1]} answers but the data has {targets.shape[1]}")
        loss = F.binary_cross_entropy_with_logits(logits, targets) * targets.shape[1]
        with torch.no_grad():
            score = targets.gather(1, logits.argmax(1, keepdim=True)).mean()
        return loss, logs_to_floats({"vqa_score": score})


def weighted_answers(meta: list[dict[str, Any]]) -> tuple[list[int], list[str], list[float]]:
    """(question row, answer, weight) for every distinct human answer; weight = its share of the answers."""
    rows, answers, weights = [], [], []
    for i, m in enumerate(meta):
        given = m.get("answers")
        if not given:
            raise ConfigError(f"generative VQA training: sample {m.get('question_id', i)} has no human answers")
        if m.get("flipped"):  # a horizontal flip swapped left/right in the question; the answers follow
            given = [swap_left_right(a) for a in given]
        for answer, count in Counter(given).items():
            rows.append(i)
            answers.append(answer)
            weights.append(count / len(given))
    return rows, answers, weights


class VQAGenerator(nn.Module):
    """Fine-tuning module: ``forward(batch) -> (loss, logs)`` with BLIP's weighted answer LM loss."""

    def __init__(self, model: nn.Module, tokenizer: Any, style: str = "prefix", label_smoothing: float = 0.0,
                 max_text_len: int = 40) -> None:  # fmt: skip
        super().__init__()
        check_generative(model, style)
        self.model = model
        self.tokenizer = tokenizer
        self.style = style
        self.label_smoothing = label_smoothing
        self.max_text_len = max_text_len

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        device = batch.images.device if batch.images is not None else next(self.parameters()).device
        rows, answers, weights = weighted_answers(batch.meta)
        questions = [batch.meta[r]["text"] for r in rows]
        ids, mask, targets = answer_sequences(self.tokenizer, questions, answers, self.style, self.max_text_len, device)
        context = question_context(self.model, batch, self.style)
        index = torch.tensor(rows, device=device)
        losses = token_losses(self.model, ids, mask, targets, repeat_context(context, index), self.label_smoothing)
        weight = torch.tensor(weights, device=device, dtype=losses.dtype)
        loss = (weight * losses).sum() / len(batch.meta)
        return loss, {"vqa_lm_loss": float(loss.detach())}


def build_finetuning(
    task: dict[str, Any], recipe: Any, model: Any, tokenizer: Any, *, rank: int = 0, world_size: int = 1
) -> tuple[Any, Any]:
    """``(VQAClassifier | VQAGenerator, VQA train loader)`` for ``vlp finetune``.

    Writes the training answer vocabulary into ``task["answer_vocab"]`` (saved with the run).
    """
    opts = from_dict(VQATask, task, "task")
    loader = build_loader(
        recipe.data, "train", tokenizer, recipe.train.batch_size, num_workers=recipe.train.num_workers,
        rank=rank, world_size=world_size, pin_memory=torch.cuda.is_available(),
    )  # fmt: skip
    vocab = dataset_vocab(loader.dataset)
    if opts.mode == "classify":
        if not vocab:
            raise ConfigError("data: VQA classification needs VQA data with answers (e.g. shapesworld format: vqa)")
        if opts.answer_vocab and opts.answer_vocab != vocab:
            raise ConfigError("task.answer_vocab: differs from the vocabulary the data loader built; remove it")
        ensure_vqa_head(model, len(vocab), opts.hidden)
        recipe.model.heads["vqa"] = model.cfg.heads["vqa"]  # the run's saved recipe rebuilds the head
        module: nn.Module = VQAClassifier(model)
    else:
        module = VQAGenerator(model, tokenizer, opts.style, opts.label_smoothing, recipe.data.max_text_len)
    task["answer_vocab"] = vocab  # generative: the candidates of rank-mode evaluation
    return module, loader


__all__ = ["VQAClassifier", "VQAGenerator", "VQATask", "build_finetuning", "weighted_answers"]
