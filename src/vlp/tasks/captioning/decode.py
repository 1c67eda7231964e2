"""The captioning decode step: decoding starts from ``[CLS] prompt`` and cross-attends to the image
tokens (:func:`vlp.tasks.decoding.grounded_generate`); the caption leaves the prompt out."""

from __future__ import annotations

from typing import Any

import torch

from vlp.data.batch import Batch
from vlp.tasks.decoding import DecodeOptions, grounded_generate


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """``[CLS]`` + the prompt's word pieces (no ``[SEP]``): where decoding starts."""
    return tokenizer([prompt], max_length=512).input_ids[0].tolist()[:-1]


def captions_of(model: Any, tokenizer: Any, batch: Batch, prompt: str, options: DecodeOptions) -> list[str]:
    """One caption per image of ``batch`` (on the model's device), prompt excluded."""
    image = model.image_tokens(batch)
    start = torch.tensor([prompt_ids(tokenizer, prompt)] * len(batch), device=image.tokens.device)
    return grounded_generate(model, tokenizer, start, image, options)


__all__ = ["captions_of", "prompt_ids"]
