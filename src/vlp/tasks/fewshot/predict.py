"""Classify a user's own images with learned CoOp prompts or a CLIP-Adapter (and the template classifier)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from vlp.tasks.common import image_batch, model_data_config
from vlp.tasks.fewshot.head import ClipAdapter, CoOpPrompts
from vlp.tasks.zeroshot import class_embeddings, logit_scale


def classify(
    model: Any,
    tokenizer: Any,
    images: list[Any],
    learned: CoOpPrompts | ClipAdapter,
    class_names: Sequence[str] | None = None,
    templates: str | Sequence[str] = ("a photo of a {}.",),
) -> tuple[list[str], torch.Tensor]:
    """Labels and ``(N, C)`` class probabilities of ``images`` (PIL images or paths).

    ``learned``: trained :class:`CoOpPrompts` (their class names are the classes), or a :class:`ClipAdapter`
    with ``class_names`` and the ``templates`` its frozen classifier was built from.
    """
    if isinstance(learned, CoOpPrompts):
        names = learned.class_names
    elif class_names is None:
        raise TypeError("class_names: an adapter classifies among the class names it was trained with; pass them")
    else:
        names = list(class_names)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if isinstance(learned, CoOpPrompts):
                classes = learned.to(device)(model)
            else:
                max_len = model_data_config(model).max_text_len
                classes = class_embeddings(model, tokenizer, names, templates, max_len)
            image = model.encode_image(image_batch(model, images).to(device))
            if isinstance(learned, ClipAdapter):
                # an adapter trained elsewhere (CPU features, float32): moved to the features' device, run in
                # its own dtype
                learned = learned.to(image.device)
                dtype = next(learned.parameters()).dtype
                image = learned(image.to(dtype)).to(image.dtype)
            probs = (logit_scale(model) * image @ classes.T).float().softmax(dim=-1).cpu()
    finally:
        model.train(was_training)
    return [names[i] for i in probs.argmax(1).tolist()], probs
