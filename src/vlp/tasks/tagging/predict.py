"""Tag a user's own images: the categories above a probability threshold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vlp.tasks.common import image_batch
from vlp.tasks.tagging.head import head_options, tag_logits


def predict(
    model: Any, images: list[Any], *, threshold: float = 0.5, batch_size: int = 64
) -> list[list[tuple[str, float]]]:
    """For each image (PIL image or path): the ``(class name, probability)`` pairs above ``threshold``,
    most probable first. Class names come from the head (``model.heads.tagging.class_names``)."""
    from PIL import Image

    if isinstance(images, (str, Path, Image.Image)):
        raise TypeError("images: expected a list of PIL images or paths, got a single image; wrap it in a list")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold: expected a probability in [0, 1], got {threshold}")
    options = head_options(model)
    if not images:
        raise ValueError("images: got an empty list")
    names = options.class_names or [str(c) for c in range(options.num_classes)]
    device = next(model.parameters()).device
    out: list[list[tuple[str, float]]] = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(images), batch_size):
            batch = image_batch(model, images[start : start + batch_size]).to(device)
            with torch.no_grad():
                probs = torch.sigmoid(tag_logits(model, batch, options.pool).float()).cpu()
            for row in probs.tolist():
                found = sorted(((names[c], p) for c, p in enumerate(row) if p > threshold), key=lambda x: -x[1])
                out.append(found)
    finally:
        model.train(was_training)
    return out
