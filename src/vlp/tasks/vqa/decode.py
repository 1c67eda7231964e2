"""Generative VQA (BLIP style): the image-grounded decoder writes the answer.

Two ways to condition the decoder on the question (``style``):

- ``prefix`` (any model with a decoder): the decoder reads ``[CLS] question [SEP] answer [SEP]``
  while cross-attending to the image tokens; the LM loss counts only the answer and its final
  ``[SEP]`` (the question is a prompt, masked out of the targets, found by its segment id 0).
- ``blip`` (BLIP's VQA model): the image-grounded text encoder fuses question and image
  (``model.fuse``); the decoder reads ``[CLS] answer [SEP]`` and cross-attends to the fused
  question tokens instead of the image. Needs the fused text width to equal the decoder's
  cross-attention input width (true for BLIP, whose text and image widths match).

Training (:class:`~vlp.tasks.vqa.finetune.VQAGenerator`) follows BLIP: every distinct human answer
of a question is a target sequence weighted by its share of the annotators (count / number of
answers); the loss is the weighted sum of the answers' summed token losses, averaged over questions.

Answers are produced by decoding (greedy / beam / nucleus, :class:`~vlp.tasks.decoding.DecodeOptions`)
or by ranking a candidate list (BLIP's "rank" inference): each candidate's summed
log-probability under the decoder, best one wins.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from vlp.config import ConfigError
from vlp.core.outputs import VisualTokens
from vlp.data.batch import Batch
from vlp.objectives.masking import IGNORE
from vlp.tasks.common import has_fusion
from vlp.tasks.decoding import DecodeOptions, grounded_generate

STYLES = ("prefix", "blip")


def check_generative(model: Any, style: str) -> None:
    """A clear error when ``model`` cannot run generative VQA in ``style``."""
    if style not in STYLES:
        raise ConfigError(f"task.style: {style!r} is not one of {', '.join(STYLES)}")
    if getattr(model, "decoder", None) is None:
        raise ConfigError(f"generative VQA needs a text decoder (model.decoder); model {model.cfg.name!r} has none")
    if style == "blip":
        if not has_fusion(model):
            raise ConfigError("task.style blip: the question is encoded by the fusion module, which this model lacks")
        layer = next((b for b in model.decoder.layers if getattr(b, "cross_attn", None) is not None), None)
        width = getattr(model.fusion, "text_dim", 0)
        if layer is None or layer.cross_attn.kv.in_features != width:
            raise ConfigError(
                f"task.style blip: the decoder cross-attends to width "
                f"{None if layer is None else layer.cross_attn.kv.in_features}, the fused question has width {width}; "
                "use style: prefix"
            )


def question_context(model: Any, batch: Batch, style: str) -> VisualTokens:
    """What the decoder cross-attends to: the image tokens (``prefix``) or, for ``blip``, the fused
    question tokens ``(B, Lq, D)`` with the question's keep-mask."""
    image = model.image_tokens(batch)
    if style == "prefix":
        return image
    ids, mask, types = model.text_inputs(batch)
    fused = model.fuse(model.text_tokens(ids, mask, types), mask, image)
    return VisualTokens(fused.text, mask)


def repeat_context(context: VisualTokens, rows: torch.Tensor) -> VisualTokens:
    """The rows ``rows`` of ``context``: one per answer sequence of a question."""
    return VisualTokens(context.tokens[rows], context.mask[rows])


def answer_sequences(
    tokenizer: Any, questions: list[str], answers: list[str], style: str, max_len: int, device: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decoder input ids, mask ``(N, L)`` and the target mask ``(N, L-1)`` (True where token ``t+1``
    is an answer token or the final ``[SEP]``: what the loss and the ranking count)."""
    if style == "prefix":
        tok = tokenizer(questions, max_length=max_len, pair=answers)
        targets = (tok.token_type_ids[:, 1:] == 1) & tok.attention_mask[:, 1:].bool()
    else:
        tok = tokenizer(answers, max_length=max_len)
        targets = tok.attention_mask[:, 1:].bool()
    return tok.input_ids.to(device), tok.attention_mask.bool().to(device), targets.to(device)


def token_losses(
    model: Any, ids: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor, context: VisualTokens,
    label_smoothing: float = 0.0,
) -> torch.Tensor:  # fmt: skip
    """Summed next-token cross-entropy over the target positions of each sequence: ``(N,)``."""
    logits = model.decode(ids, mask, context)[:, :-1].float()
    labels = ids[:, 1:].masked_fill(~targets, IGNORE)
    flat = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE,
        label_smoothing=label_smoothing, reduction="none",
    )  # fmt: skip
    return flat.view(labels.shape).sum(1)


def _prompts(batch: Batch, style: str, tokenizer: Any) -> list[list[int]]:
    """Per-row decoder prompts: ``[CLS] question [SEP]`` (prefix) or ``[CLS]`` (blip)."""
    if style == "blip":
        return [[tokenizer.cls_id]] * len(batch.meta)
    lengths = batch.attention_mask.sum(1).tolist()
    return [batch.input_ids[i, :n].tolist() for i, n in enumerate(lengths)]


@torch.no_grad()
def generate_answers(model: Any, tokenizer: Any, batch: Batch, style: str, options: DecodeOptions) -> list[str]:
    """Decode one answer per question of ``batch`` (on the model's device)."""
    context = question_context(model, batch, style)
    prompts = _prompts(batch, style, tokenizer)
    out: list[str] = [""] * len(prompts)
    # the decoder has absolute positions, so prompts of one call must share a length: group rows by it
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(len(p), []).append(i)
    for rows in groups.values():
        index = torch.tensor(rows, device=context.tokens.device)
        prompt = torch.tensor([prompts[r] for r in rows], dtype=torch.long, device=index.device)
        for r, text in zip(rows, grounded_generate(model, tokenizer, prompt, repeat_context(context, index), options)):
            out[r] = text
    return out


@torch.no_grad()
def rank_answers(
    model: Any, tokenizer: Any, batch: Batch, style: str, candidates: list[str], max_len: int = 40,
    chunk: int = 512,
) -> list[str]:  # fmt: skip
    """For each question the candidate answer with the highest summed log-probability."""
    if not candidates:
        raise ConfigError("rank: the candidate answer list is empty")
    context = question_context(model, batch, style)
    device = context.tokens.device
    questions = [m["text"] for m in batch.meta]
    scores = torch.empty(len(questions), len(candidates))
    pairs = [(q, a) for q in range(len(questions)) for a in range(len(candidates))]
    for start in range(0, len(pairs), chunk):
        part = pairs[start : start + chunk]
        q_idx = [q for q, _ in part]
        ids, mask, targets = answer_sequences(
            tokenizer, [questions[q] for q in q_idx], [candidates[a] for _, a in part], style, max_len, device
        )
        # -loss without smoothing = summed log-probability of the candidate's tokens
        logp = -token_losses(model, ids, mask, targets, repeat_context(context, torch.tensor(q_idx, device=device)))
        for (q, a), value in zip(part, logp.cpu().tolist()):
            scores[q, a] = value
    return [candidates[i] for i in scores.argmax(1).tolist()]


__all__ = [
    "STYLES",
    "answer_sequences",
    "check_generative",
    "generate_answers",
    "question_context",
    "rank_answers",
    "repeat_context",
    "token_losses",
]
