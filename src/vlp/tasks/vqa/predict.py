"""Answer questions about a user's own images."""

from __future__ import annotations

from typing import Any

import torch

from vlp.tasks.common import check_texts, image_batch, model_data_config
from vlp.tasks.vqa.decode import check_generative, generate_answers, rank_answers
from vlp.tasks.vqa.head import answer_logits, default_decode_options, resolve_method


def predict(
    model: Any,
    tokenizer: Any,
    images: list[Any],
    texts: list[str],
    *,
    answer_vocab: list[str] | None = None,
    method: str = "auto",
    style: str = "prefix",
    options: Any = None,
    device: Any = None,
) -> list[str]:
    """One answer per (image, question) pair; images are PIL images or paths.

    ``classify`` needs ``answer_vocab`` (the fine-tuning vocabulary: ``task.answer_vocab`` of the run).
    """
    texts = check_texts(texts, "texts")
    if len(images) != len(texts):
        raise ValueError(f"got {len(images)} images but {len(texts)} questions; pass one question per image")
    method = resolve_method(model, method)
    options = options or default_decode_options()
    device = device if device is not None else next(model.parameters()).device
    tok = tokenizer(texts, max_length=model_data_config(model).max_text_len)
    batch = image_batch(model, images).replace(
        input_ids=tok.input_ids, attention_mask=tok.attention_mask.bool(), token_type_ids=tok.token_type_ids,
        meta=[{"text": t} for t in texts],
    ).to(device)  # fmt: skip
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if method == "classify":
                if not answer_vocab or len(answer_vocab) != model.heads["vqa"][-1].out_features:
                    raise ValueError("predict (classify): pass answer_vocab, the vocabulary of the vqa head")
                return [answer_vocab[i] for i in answer_logits(model, batch).argmax(1).tolist()]
            check_generative(model, style)
            if method == "rank":
                return rank_answers(model, tokenizer, batch, style, list(answer_vocab or []))
            return generate_answers(model, tokenizer, batch, style, options)
    finally:
        model.train(was_training)


__all__ = ["predict"]
