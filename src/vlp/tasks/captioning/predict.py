"""Caption a user's own images."""

from __future__ import annotations

from typing import Any

from vlp.tasks.captioning.decode import captions_of
from vlp.tasks.common import image_batch
from vlp.tasks.decoding import DecodeOptions


def caption(
    model: Any,
    tokenizer: Any,
    images: list[Any],
    strategy: str = "beam",
    *,
    prompt: str = "a picture of ",
    device: Any = None,
    **decode: Any,
) -> list[str]:
    """One caption per image (PIL images or paths); ``decode`` holds :class:`DecodeOptions` fields
    (``num_beams``, ``max_new_tokens``, ``length_penalty``, ``top_p``, ``seed``, ...).

    ``prompt`` must be the one the model was fine-tuned with (a run's ``task["prompt"]``, which
    :func:`vlp.tasks.common.load_model` returns as ``LoadedModel.task``).
    """
    options = DecodeOptions(strategy=strategy, **decode)
    device = device if device is not None else next(model.parameters()).device
    batch = image_batch(model, images).to(device)
    was_training = model.training
    model.eval()
    try:
        return captions_of(model, tokenizer, batch, prompt, options)
    finally:
        model.train(was_training)


def predict(model: Any, tokenizer: Any, images: list[Any], texts: list[str] | None = None, **kwargs: Any) -> list[str]:
    """The task-uniform predict API (:func:`caption`); captioning takes no input texts."""
    if texts:
        raise ValueError("captioning predict takes no texts; pass prompt=... to caption() instead")
    return caption(model, tokenizer, images, **kwargs)


__all__ = ["caption", "predict"]
