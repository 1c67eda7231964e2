"""The pieces every decoding strategy shares: the step-function contract, the result type, state
handling, logit processing (repetition penalty, minimum length), the nucleus mask and the length
penalty. See :mod:`vlp.tasks.decoding` for the conventions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

StepFn = Callable[[torch.Tensor, Any], Any]


@dataclass
class GenerationOutput:
    """Result of a decoding run.

    tokens: (B, T0 + G) long, the prompt followed by the generated tokens, padded.
    scores: (B,) the sum of log-probabilities (beam search: the length-penalized
        score that ranked the hypothesis).
    lengths: (B,) long, generated tokens per row, end token included.
    prompt_length: T0.
    beams: (B, R, T0 + G) the best R hypotheses of beam search (R =
        ``num_return_sequences``), best first; ``None`` for greedy and sampling.
    beam_scores: (B, R) their scores, or ``None``.
    """

    tokens: torch.Tensor
    scores: torch.Tensor
    lengths: torch.Tensor
    prompt_length: int
    beams: torch.Tensor | None = None
    beam_scores: torch.Tensor | None = None

    @property
    def new_tokens(self) -> torch.Tensor:
        """(B, G) the generated part of ``tokens``."""
        return self.tokens[:, self.prompt_length :]


# ----------------------------------------------------------------------------- helpers


def map_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Apply ``fn`` to every tensor inside nested tuples / lists / dicts; other leaves pass through."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        mapped = [map_tensors(v, fn) for v in obj]
        return type(obj)(*mapped) if hasattr(obj, "_fields") else type(obj)(mapped)
    return obj


def expand_state(state: Any, k: int) -> Any:
    return map_tensors(state, lambda t: t.repeat_interleave(k, dim=0))


def reorder_state(state: Any, index: torch.Tensor) -> Any:
    return map_tensors(state, lambda t: t.index_select(0, index.to(t.device)))


def run_step(step_fn: StepFn, tokens: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
    out = step_fn(tokens, state)
    logits, new_state = (out[0], out[1]) if isinstance(out, tuple) else (out, state)
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"step_fn must return a logits tensor (or (logits, state)), got {type(logits).__name__}")
    rows, length = tokens.shape
    if logits.dim() == 3:
        if logits.shape[:2] != (rows, length):
            raise ValueError(f"step_fn returned logits {tuple(logits.shape)}; expected ({rows}, {length}, V)")
        logits = logits[:, -1]
    if logits.dim() != 2 or logits.shape[0] != rows:
        raise ValueError(
            f"step_fn returned logits {tuple(logits.shape)}; expected ({rows}, V) or ({rows}, {length}, V)"
        )
    return logits.float(), new_state


def check_common(prompt: torch.Tensor, max_new_tokens: int, min_new_tokens: int, repetition_penalty: float) -> None:
    if not isinstance(prompt, torch.Tensor) or prompt.dim() != 2 or prompt.dtype != torch.long:
        got = f"{prompt.dtype} tensor of shape {tuple(prompt.shape)}" if isinstance(prompt, torch.Tensor) else prompt
        raise ValueError(f"prompt must be a (B, T0) long tensor of token ids with T0 >= 1, got {got}")
    if prompt.shape[1] < 1:
        raise ValueError("prompt must hold at least one token (e.g. [BOS] / [DEC])")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not 0 <= min_new_tokens <= max_new_tokens:
        raise ValueError(f"min_new_tokens must be in 0..max_new_tokens ({max_new_tokens}), got {min_new_tokens}")
    if repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0 (1.0 = off), got {repetition_penalty}")


def process_logits(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    generated: int,
    eos_token_id: int | None,
    min_new_tokens: int,
    repetition_penalty: float,
) -> torch.Tensor:
    """Apply the repetition penalty and the minimum-length rule to next-token logits (B, V).

    Repetition penalty (Keskar et al. 2019, as in HF): every token already in
    ``tokens`` (prompt included) has its logit divided by the penalty if
    positive, multiplied if negative. While fewer than ``min_new_tokens`` tokens
    were generated, the end token is forbidden.
    """
    if repetition_penalty != 1.0:
        seen = logits.gather(1, tokens)
        seen = torch.where(seen < 0, seen * repetition_penalty, seen / repetition_penalty)
        logits = logits.scatter(1, tokens, seen)
    if eos_token_id is not None and generated < min_new_tokens:
        logits = logits.clone()
        logits[:, eos_token_id] = float("-inf")
    return logits


def top_p_mask(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Boolean keep-mask (B, V) of the nucleus: the smallest set of most likely tokens whose
    probability mass reaches ``top_p`` (the most likely token is always kept)."""
    sorted_p, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_p.cumsum(-1) - sorted_p
    keep_sorted = mass_before < top_p
    keep_sorted[..., 0] = True
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


def length_penalty_factor(length: int, alpha: float, style: str = "power") -> float:
    """``lp(L)``: the divisor of a hypothesis' summed log-probability (see module docs)."""
    if style == "power":
        return float(length) ** alpha
    if style == "gnmt":
        return ((5.0 + length) / 6.0) ** alpha
    raise ValueError(f"length_penalty_style must be 'power' or 'gnmt', got {style!r}")


__all__ = [
    "GenerationOutput",
    "StepFn",
    "check_common",
    "expand_state",
    "length_penalty_factor",
    "map_tensors",
    "process_logits",
    "reorder_state",
    "run_step",
    "top_p_mask",
]
