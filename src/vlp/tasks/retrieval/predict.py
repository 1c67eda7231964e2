"""Retrieve among a user's own images and texts: the top-k texts of every image and images of every text."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from vlp.tasks.common import check_texts, image_batch, model_data_config
from vlp.tasks.retrieval.head import encode, resolve_mode, score_matrices


@dataclass
class RetrievalPrediction:
    """Top-k both ways: ``i2t`` ``(N_i, k)`` text indices per image and ``t2i`` ``(N_t, k)`` image
    indices per text, best first, with their scores (long / float tensors)."""

    i2t: Any
    t2i: Any
    i2t_scores: Any
    t2i_scores: Any


def retrieve(
    model: Any,
    tokenizer: Any,
    images: list[Any],
    texts: list[str],
    k: int = 5,
    *,
    mode: str = "auto",
    rerank_k: int = 16,
    add_itc: bool = False,
    device: Any = None,
) -> RetrievalPrediction:
    """Rank ``texts`` for every image and ``images`` for every text (PIL images or paths).

    ``k`` results per query (capped at the number of candidates); ``mode`` and ``rerank_k`` (the
    two-stage shortlist) as in :func:`vlp.tasks.retrieval.evaluate`.
    """
    texts = check_texts(texts)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    device = device if device is not None else next(model.parameters()).device
    mode = resolve_mode(model, mode)
    batch = image_batch(model, images)
    max_len = model_data_config(model).max_text_len
    was_training = model.training
    model.eval()
    try:
        encoded = encode(model, [batch], texts, tokenizer, mode=mode, device=device, max_text_len=max_len)
        scores = score_matrices(model, encoded, mode, k=max(k, rerank_k), add_itc=add_itc, device=device)
    finally:
        model.train(was_training)
    i2t = scores.i2t.topk(min(k, scores.i2t.shape[1]), dim=1)
    t2i = scores.t2i.T.topk(min(k, scores.t2i.shape[0]), dim=1)
    return RetrievalPrediction(i2t.indices, t2i.indices, i2t.values.to(torch.float32), t2i.values.to(torch.float32))


predict = retrieve
