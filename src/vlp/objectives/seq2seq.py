"""OFA's sequence-to-sequence loss (Wang et al. 2022): every task is text generation.

The encoder is the model's single-stream fusion module over ``[instruction tokens; image patches]``;
the causal decoder (``model.decode``) cross-attends to all of the encoder's output tokens and writes
the target: a caption, an answer, or a box as four location tokens (:mod:`vlp.text.locations`). One
cross-entropy over every target token of the batch, whatever its task, is the whole loss.

As a pretraining objective (``objectives: {seq2seq: {}}``) on caption data, the instruction is empty
(the encoder reads ``[CLS]`` and the image) and the decoder writes the caption. The multitask form with
OFA's instructions and VQA / referring-expression samples is the ``seq2seq`` task (:mod:`vlp.tasks.seq2seq`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vlp.config import ConfigError, part
from vlp.core.outputs import VisualTokens
from vlp.objectives.base import Logs, Objective, ObjectiveConfig, ObjectiveOptions, require
from vlp.objectives.masking import IGNORE


def encoder_context(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    image: VisualTokens,
    token_type_ids: torch.Tensor | None = None,
) -> VisualTokens:
    """OFA's encoder output, what the decoder cross-attends to: ``[image; text]`` tokens ``(B, N + L, D)``
    of the fusion module run on the instruction ``input_ids`` and ``image``, with their keep-mask."""
    if not getattr(model, "has_fusion", False) or getattr(model, "decoder", None) is None:
        raise ConfigError(
            f"seq2seq: model {model.cfg.name!r} needs a fusion module (the encoder) and model.decoder "
            "(see the ofa recipes)"
        )
    fused = model.fuse(model.text_tokens(input_ids, attention_mask, token_type_ids), attention_mask, image)
    return VisualTokens(torch.cat([fused.image, fused.text], 1), torch.cat([image.mask, attention_mask], 1))


def target_labels(decoder_ids: torch.Tensor, decoder_mask: torch.Tensor) -> torch.Tensor:
    """Next-token labels ``(B, T-1)`` of decoder inputs ``[CLS] target [SEP]``: -100 on padding."""
    return decoder_ids[:, 1:].masked_fill(~decoder_mask[:, 1:].bool(), IGNORE)


def token_nll(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-token cross-entropy ``(B, T-1)`` of logits ``(B, T, V)`` (position t predicts t+1); 0 where ignored."""
    flat = F.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE,
        label_smoothing=label_smoothing, reduction="none",
    )  # fmt: skip
    return flat.view(labels.shape)


def seq2seq_loss(
    logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean cross-entropy over every target token of the batch, and the per-row summed losses ``(B,)``;
    ``labels``: :func:`target_labels`, built once by the caller (which counts or scores with them too)."""
    nll = token_nll(logits, labels, label_smoothing)
    counted = (labels != IGNORE).sum().clamp_min(1)
    return nll.sum() / counted, nll.sum(1)


@dataclass(eq=False)
class Seq2SeqConfig(ObjectiveOptions):
    label_smoothing: float = 0.0  # OFA uses 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")


class Seq2Seq(Objective):
    """Captioning as OFA trains it, with an empty instruction: the encoder reads ``[CLS]`` + the image."""

    name = "seq2seq"

    def __init__(self, cfg: Seq2SeqConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def compute(self, outputs, batch) -> tuple[torch.Tensor, Logs]:
        ids = require(batch.input_ids, "batch.input_ids", "seq2seq")
        mask = require(batch.attention_mask, "batch.attention_mask", "seq2seq").bool()
        image = require(outputs.image, "outputs.image", "seq2seq")
        model = outputs.model
        context = encoder_context(model, ids[:, :1], mask[:, :1], image)
        logits = model.decode(ids, mask, context)
        labels = target_labels(ids, mask)
        loss, _ = seq2seq_loss(logits, labels, self.cfg.label_smoothing)
        with torch.no_grad():
            counted = labels != IGNORE
            acc = (logits[:, :-1].argmax(-1) == labels)[counted].float().mean()
        return loss, {"seq2seq_acc": acc}


part(ObjectiveConfig, "seq2seq", Seq2Seq)(Seq2SeqConfig)

__all__ = ["Seq2Seq", "Seq2SeqConfig", "encoder_context", "seq2seq_loss", "target_labels", "token_nll"]
