"""The VQA classification head: ``vqa`` maps the fused [CLS] to one logit per answer of a vocabulary;
which method (head or decoder) answers a model's questions."""

from __future__ import annotations

from typing import Any

import torch

from vlp.config import ConfigError
from vlp.data.batch import Batch
from vlp.models.heads import HeadContext, build_heads, validate_heads
from vlp.tasks.common import has_fusion
from vlp.tasks.decoding import DecodeOptions


def answer_logits(model: Any, batch: Batch) -> torch.Tensor:
    """``(B, A)`` answer logits: fuse question and image, the ``vqa`` head on the pooled output."""
    ids, mask, types = model.text_inputs(batch)
    fused = model.fuse(model.text_tokens(ids, mask, types), mask, model.image_tokens(batch))
    return model.heads["vqa"](fused.pooled)


def ensure_vqa_head(model: Any, num_answers: int, hidden: int = 0) -> None:
    """Give ``model`` a ``vqa`` head of ``num_answers`` outputs (a fresh one unless it already fits);
    the model config is updated too, so the saved recipe rebuilds the same head."""
    if not has_fusion(model):
        raise ConfigError("VQA classification needs a fusion module (the vqa head reads the fused [CLS])")
    current = model.heads["vqa"] if "vqa" in model.heads else None
    if current is not None and current[-1].out_features == num_answers:
        return
    options = {"num_answers": num_answers, **({"hidden": hidden} if hidden else {})}
    ctx = HeadContext(pooled_dim=model.fusion.pooled_dim)
    device = next(model.parameters()).device
    model.heads["vqa"] = build_heads({"vqa": options}, ctx)["vqa"].to(device)
    model.cfg.heads["vqa"] = validate_heads({"vqa": options})["vqa"]


def dataset_vocab(dataset: Any) -> list[str]:
    """The answer vocabulary a VQA dataset's targets index (empty when it has none)."""
    config = getattr(getattr(dataset, "processor", None), "config", None)
    return list(getattr(config, "answer_vocab", None) or [])


def default_decode_options() -> DecodeOptions:
    """Greedy decoding of at most 10 tokens: answers are a few words."""
    return DecodeOptions(strategy="greedy", max_new_tokens=10)


def resolve_method(model: Any, method: str) -> str:
    """``auto`` -> ``classify`` when the model has a vqa head, else ``generate``; checks the method."""
    if method == "auto":
        return "classify" if "vqa" in model.heads else "generate"
    if method not in ("classify", "generate", "rank"):
        raise ConfigError(f"VQA method: {method!r} is not one of auto, classify, generate, rank")
    if method == "classify" and "vqa" not in model.heads:
        raise ConfigError("VQA classify: the model has no vqa head (fine-tune it with a task recipe of mode classify)")
    return method


__all__ = ["answer_logits", "dataset_vocab", "default_decode_options", "ensure_vqa_head", "resolve_method"]
