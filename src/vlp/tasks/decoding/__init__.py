"""Model-independent text generation: greedy, beam search and nucleus sampling.

A model is seen only through a *step function*::

    step_fn(tokens: LongTensor (B, T), state) -> logits (B, V)
                                              | logits (B, T, V)      # full-prefix models
                                              | (logits, new_state)

``tokens`` holds the prompt and everything generated so far (batch-first);
``state`` is whatever the model wants carried between steps (encoder outputs,
a KV cache, ...) and may be ``None``. A step function that recomputes the whole
prefix can return per-position logits ``(B, T, V)``; the last position is used.

Beam search runs the step function on ``B * num_beams`` rows. Tensors in the
state are expanded (``repeat_interleave`` along dim 0) at the start and
re-indexed along dim 0 whenever beams are re-ordered; nested tuples, lists and
dicts are walked. Pass ``expand_state`` / ``reorder_state`` for anything else.

Conventions:

- lengths count *generated* tokens, including the end token, never the prompt;
- scores are sums of log-probabilities of the generated tokens under the
  model's distribution after the repetition penalty and the minimum-length
  rule (before temperature and top-k/top-p filtering);
- beam search ranks finished hypotheses by ``sum_logprob / lp(length)`` where
  ``lp(L) = L ** length_penalty`` (``length_penalty_style="power"``, what HF
  transformers and BLIP use) or ``((5 + L) / 6) ** length_penalty`` (``"gnmt"``,
  Wu et al. 2016). ``length_penalty = 0`` ranks by raw log-probability;
- after the end token a row is filled with ``pad_token_id``; finished rows keep
  going through ``step_fn`` until the whole batch is done, so the pad id must be
  a valid token id of the model.

Files: ``base`` (the contract, state handling, logit processing), ``sampling`` (greedy, nucleus),
``beam`` (beam search) and ``grounded`` (:class:`DecodeOptions` and :func:`grounded_generate`, the
image-grounded decode step that captioning and generative VQA share).
"""

from __future__ import annotations

from typing import Any

import torch

from vlp.tasks.decoding.base import (
    GenerationOutput,
    StepFn,
    length_penalty_factor,
    map_tensors,
    process_logits,
    top_p_mask,
)
from vlp.tasks.decoding.beam import beam_search
from vlp.tasks.decoding.grounded import DecodeOptions, grounded_generate
from vlp.tasks.decoding.sampling import greedy_decode, sample_decode


def generate(step_fn: StepFn, prompt: torch.Tensor, method: str = "greedy", **kwargs: Any) -> GenerationOutput:
    """Dispatch to :func:`greedy_decode`, :func:`beam_search` or :func:`sample_decode` by name."""
    methods = {"greedy": greedy_decode, "beam": beam_search, "sample": sample_decode}
    if method not in methods:
        raise ValueError(f"unknown decoding method {method!r}; allowed: {', '.join(methods)}")
    return methods[method](step_fn, prompt, **kwargs)


__all__ = [
    "DecodeOptions",
    "GenerationOutput",
    "StepFn",
    "beam_search",
    "generate",
    "greedy_decode",
    "grounded_generate",
    "length_penalty_factor",
    "map_tensors",
    "process_logits",
    "sample_decode",
    "top_p_mask",
]
