"""The OFA-style model on a user's own images: caption them, answer questions, ground expressions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from vlp.data.transforms import eval_geometry
from vlp.metrics.refexp import view_box_to_pixels
from vlp.tasks.common import check_texts, image_batch, load_upright, model_data_config
from vlp.tasks.decoding import DecodeOptions
from vlp.tasks.seq2seq.data import CAPTION_INSTRUCTION, instruction_length, refexp_instruction
from vlp.tasks.seq2seq.decode import generate_boxes, generate_text


def _batch(model: Any, tokenizer: Any, images: Sequence[Any], texts: list[str]) -> Any:
    if len(texts) != len(images):
        raise ValueError(f"got {len(images)} images but {len(texts)} texts: give one text per image")
    device = next(model.parameters()).device
    enc = tokenizer(texts, max_length=instruction_length(tokenizer, model_data_config(model).max_text_len))
    batch = image_batch(model, images)
    return batch.replace(input_ids=enc.input_ids, attention_mask=enc.attention_mask.bool()).to(device)


@torch.no_grad()
def caption(model: Any, tokenizer: Any, images: Sequence[Any], options: DecodeOptions | None = None) -> list[str]:
    """One caption per image (PIL images or paths)."""
    images = load_upright(list(images))
    batch = _batch(model, tokenizer, images, [CAPTION_INSTRUCTION] * len(images))
    return generate_text(model.eval(), tokenizer, batch, options or DecodeOptions(strategy="beam"))


@torch.no_grad()
def answer(model: Any, tokenizer: Any, images: Sequence[Any], questions: Sequence[str],
           options: DecodeOptions | None = None, answers: list[str] | None = None) -> list[str]:  # fmt: skip
    """The answer to each image's question; ``answers`` restricts the answers to that list."""
    questions = check_texts(questions, "questions")
    batch = _batch(model, tokenizer, load_upright(list(images)), questions)
    return generate_text(model.eval(), tokenizer, batch, options or DecodeOptions(strategy="greedy"), answers)


@torch.no_grad()
def ground(model: Any, tokenizer: Any, images: Sequence[Any], expressions: Sequence[str]) -> list[list[float]]:
    """The box each expression describes, ``[x0, y0, x1, y1]`` in pixels of the (upright) image.

    The box is read on the model's eval view of the image and mapped back through it, as the evaluation does
    (the whole image for the default ``resize`` transform; the crop window, margin added, for ``center``).
    """
    expressions = check_texts(expressions, "expressions")
    upright = load_upright(list(images))
    batch = _batch(model, tokenizer, upright, [refexp_instruction(e) for e in expressions])
    boxes = generate_boxes(model.eval(), tokenizer, batch, DecodeOptions(strategy="greedy"))
    data = model_data_config(model)
    view_of = eval_geometry(data.image_size, data.transform).view
    return [view_box_to_pixels(box, view_of(*image.size)) for image, box in zip(upright, boxes.tolist())]


__all__ = ["answer", "caption", "ground"]
