"""Token-by-token decoding of one sequence per row: greedy and sampling (temperature, top-k, top-p)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from vlp.tasks.decoding.base import GenerationOutput, StepFn, check_common, process_logits, run_step, top_p_mask


def _rollout(
    step_fn: StepFn,
    prompt: torch.Tensor,
    choose: Callable[[torch.Tensor], torch.Tensor],
    *,
    max_new_tokens: int,
    eos_token_id: int | None,
    pad_token_id: int,
    min_new_tokens: int,
    repetition_penalty: float,
    state: Any,
) -> GenerationOutput:
    check_common(prompt, max_new_tokens, min_new_tokens, repetition_penalty)
    tokens = prompt
    rows = prompt.shape[0]
    finished = torch.zeros(rows, dtype=torch.bool, device=prompt.device)
    scores = torch.zeros(rows, device=prompt.device)
    lengths = torch.zeros(rows, dtype=torch.long, device=prompt.device)
    for step in range(max_new_tokens):
        logits, state = run_step(step_fn, tokens, state)
        logits = process_logits(logits, tokens, step, eos_token_id, min_new_tokens, repetition_penalty)
        logp = F.log_softmax(logits, dim=-1)
        nxt = choose(logits)
        scores = scores + torch.where(finished, 0.0, logp.gather(1, nxt[:, None]).squeeze(1))
        lengths = lengths + (~finished).long()
        nxt = torch.where(finished, torch.full_like(nxt, pad_token_id), nxt)
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        if eos_token_id is not None:
            finished = finished | (nxt == eos_token_id)
            if bool(finished.all()):
                break
    return GenerationOutput(tokens, scores, lengths, prompt.shape[1])


def greedy_decode(
    step_fn: StepFn,
    prompt: torch.Tensor,
    *,
    max_new_tokens: int,
    eos_token_id: int | None = None,
    pad_token_id: int = 0,
    min_new_tokens: int = 0,
    repetition_penalty: float = 1.0,
    state: Any = None,
) -> GenerationOutput:
    """Pick the most likely token at every step. prompt: (B, T0) long."""
    return _rollout(
        step_fn,
        prompt,
        lambda logits: logits.argmax(dim=-1),
        max_new_tokens=max_new_tokens,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        min_new_tokens=min_new_tokens,
        repetition_penalty=repetition_penalty,
        state=state,
    )


def sample_decode(
    step_fn: StepFn,
    prompt: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int = 0,
    min_new_tokens: int = 0,
    repetition_penalty: float = 1.0,
    state: Any = None,
) -> GenerationOutput:
    """Sample from ``softmax(logits / temperature)`` restricted to the top-k tokens and the
    top-p nucleus (Holtzman et al. 2020). BLIP's nucleus captioning uses top_p = 0.9.

    Pass a seeded ``torch.Generator`` (on the logits' device) for reproducible samples.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k}")

    def choose(logits: torch.Tensor) -> torch.Tensor:
        probs = F.softmax(logits / temperature, dim=-1)
        keep = torch.ones_like(probs, dtype=torch.bool)
        if top_k and top_k < probs.shape[-1]:
            kth = probs.topk(top_k, dim=-1).values[:, -1:]
            keep &= probs >= kth
        if top_p < 1.0:
            keep &= top_p_mask(probs, top_p)
        probs = probs.masked_fill(~keep, 0.0)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)

    return _rollout(
        step_fn,
        prompt,
        choose,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        min_new_tokens=min_new_tokens,
        repetition_penalty=repetition_penalty,
        state=state,
    )


__all__ = ["greedy_decode", "sample_decode"]
