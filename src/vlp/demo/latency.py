"""Inference latency as a deployed system sees it, one request at a time (batch 1, no gradients).

- Retrieval query: one caption against a gallery of images whose unimodal side is computed once
  beforehand (as an index would be). A dual encoder then costs one text encoding and a matrix-vector
  product; a two-stage model (ALBEF, VLMo) adds ``k`` fusion passes for the shortlist; a fusion-only
  model (single-stream, co-attention) needs one fusion pass per gallery image.
- VQA question: one image (pixels, or precomputed region features: the detector is not timed) and
  one question, from raw inputs to the arg-max answer.

Each latency is the median over repeated requests after warm-up calls, so one slow moment of a
shared machine does not decide it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from vlp.data.batch import Batch


def median_seconds(fn: Callable[[], Any], repeats: int = 20, warmup: int = 3) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` calls, after ``warmup`` untimed calls."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class QueryRanker:
    """Ranks a cached gallery for one text query at a time, in retrieval ``mode`` (see the module doc).

    ``gallery``: batches of images (or regions) with ``image_index``/``meta["index"]`` in order, as
    :func:`vlp.tasks.retrieval.encode` reads them.
    """

    def __init__(self, model: Any, tokenizer: Any, gallery: Sequence[Batch], mode: str, k: int = 16,
                 max_text_len: int = 40, pair_batch_size: int = 256) -> None:  # fmt: skip
        from vlp.tasks.retrieval import encode, resolve_mode

        self.model, self.tokenizer = model, tokenizer
        self.mode = resolve_mode(model, mode)
        self.k, self.max_text_len, self.pair_batch_size = k, max_text_len, pair_batch_size
        self.device = next(model.parameters()).device
        model.eval()
        self.encoded = encode(model, list(gallery), ["a shape."], tokenizer, mode=self.mode, device=self.device,
                              max_text_len=max_text_len)  # fmt: skip
        self.size = (
            self.encoded.image_embed.shape[0] if self.mode == "dual" else self.encoded.image_tokens.tokens.shape[0]
        )

    @torch.no_grad()
    def rank(self, query: str, top: int = 5) -> list[int]:
        """Gallery indices of the ``top`` best images for ``query``, best first."""
        from vlp.tasks.retrieval import pair_scorer

        tok = self.tokenizer([query], max_length=self.max_text_len)
        batch = Batch(input_ids=tok.input_ids, attention_mask=tok.attention_mask.bool(),
                      token_type_ids=tok.token_type_ids).to(self.device)  # fmt: skip
        out = self.model(batch)
        if self.mode == "dual":
            scores = self.encoded.image_embed.to(self.device) @ out.text_embed[0].float()
            return scores.topk(min(top, self.size)).indices.tolist()
        self.encoded.text_tokens = (out.text, out.text_mask)
        score = pair_scorer(self.model, self.encoded, self.device)
        if self.mode == "two_stage":
            sims = self.encoded.image_embed.to(self.device) @ out.text_embed[0].float()
            candidates = sims.topk(min(self.k, self.size)).indices
        else:
            candidates = torch.arange(self.size, device=self.device)
        fused = torch.cat([
            score(chunk, torch.zeros_like(chunk)) for chunk in candidates.split(self.pair_batch_size)
        ])  # fmt: skip
        order = fused.topk(min(top, fused.numel())).indices
        return candidates[order].tolist()


def retrieval_latency(ranker: QueryRanker, queries: Sequence[str], repeats: int = 10) -> float:
    """Median seconds to rank the gallery for one query (cycling through ``queries``)."""
    position = iter(range(10**9))

    def one() -> None:
        ranker.rank(queries[next(position) % len(queries)])

    return median_seconds(one, repeats=repeats, warmup=2)


def vqa_latency(answer: Callable[[Batch], torch.Tensor], samples: Sequence[Batch], repeats: int = 20) -> float:
    """Median seconds for ``answer(batch)`` (logits ``(1, A)``) + arg-max on single-question batches."""
    position = iter(range(10**9))

    @torch.no_grad()
    def one() -> None:
        answer(samples[next(position) % len(samples)]).argmax(-1).tolist()

    return median_seconds(one, repeats=repeats, warmup=3)


__all__ = ["QueryRanker", "median_seconds", "retrieval_latency", "vqa_latency"]
