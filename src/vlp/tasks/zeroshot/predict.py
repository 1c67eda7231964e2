"""Classify a user's own images among class names of their choosing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from vlp.tasks.common import image_batch, model_data_config
from vlp.tasks.zeroshot.head import class_embeddings, logit_scale


def classify(
    model: Any,
    tokenizer: Any,
    images: list[Any],
    class_names: Sequence[str],
    templates: str | Sequence[str] = ("a photo of a {}.",),
    *,
    weights: torch.Tensor | None = None,
) -> tuple[list[str], torch.Tensor]:
    """Zero-shot labels and ``(N, C)`` class probabilities of ``images`` (PIL images or paths).

    ``weights``: the ``(C, E)`` class embeddings of ``class_names`` already computed (by
    :func:`vlp.tasks.zeroshot.head.class_embeddings`), so that classifying batch after batch
    encodes the class prompts once; None = computed here from ``templates``.
    """
    names = list(class_names)
    if isinstance(class_names, str) or not names or not all(isinstance(n, str) for n in names):
        raise TypeError("class_names: expected a non-empty list of strings")
    if weights is not None and (weights.ndim != 2 or weights.shape[0] != len(names)):
        raise ValueError(f"weights: expected ({len(names)}, E) class embeddings, got {tuple(weights.shape)}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if weights is None:
                classes = class_embeddings(model, tokenizer, names, templates, model_data_config(model).max_text_len)
            else:
                classes = weights.to(device)
            image = model.encode_image(image_batch(model, images).to(device))
            probs = (logit_scale(model) * image @ classes.T).float().softmax(dim=-1).cpu()
    finally:
        model.train(was_training)
    return [names[i] for i in probs.argmax(1).tolist()], probs


def predict(model: Any, tokenizer: Any, images: list[Any], texts: list[str], **kwargs: Any) -> list[str]:
    """The common predict signature: ``texts`` are the class names; returns one label per image."""
    return classify(model, tokenizer, images, texts, **kwargs)[0]
