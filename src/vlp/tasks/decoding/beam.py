"""Beam search with a length penalty (the scheme of HF transformers; see :mod:`vlp.tasks.decoding`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from vlp.tasks.decoding.base import (
    GenerationOutput,
    StepFn,
    check_common,
    length_penalty_factor,
    process_logits,
    run_step,
)
from vlp.tasks.decoding.base import expand_state as default_expand
from vlp.tasks.decoding.base import reorder_state as default_reorder


def _pad_stack(seqs: list[torch.Tensor], pad: int) -> torch.Tensor:
    width = max(s.shape[0] for s in seqs)
    out = seqs[0].new_full((len(seqs), width), pad)
    for i, s in enumerate(seqs):
        out[i, : s.shape[0]] = s
    return out


def beam_search(
    step_fn: StepFn,
    prompt: torch.Tensor,
    *,
    num_beams: int,
    max_new_tokens: int,
    eos_token_id: int | None = None,
    pad_token_id: int = 0,
    min_new_tokens: int = 0,
    length_penalty: float = 1.0,
    length_penalty_style: str = "power",
    early_stopping: bool = False,
    repetition_penalty: float = 1.0,
    num_return_sequences: int = 1,
    state: Any = None,
    expand_state: Callable[[Any, int], Any] | None = None,
    reorder_state: Callable[[Any, torch.Tensor], Any] | None = None,
) -> GenerationOutput:
    """Beam search with length penalty. prompt: (B, T0) long.

    Each step scores the ``num_beams * V`` continuations of every batch item and
    keeps the best ``2 * num_beams``; a continuation ending in ``eos_token_id``
    among the best ``num_beams`` becomes a finished hypothesis, the others refill
    the beam (the scheme of HF transformers). A batch item stops when it has
    ``num_beams`` hypotheses and either ``early_stopping`` is set or no running
    beam can still beat the worst of them: log-probabilities only fall as a
    beam grows, so ``running_sum / max lp(L)`` over the lengths still reachable
    is an exact bound. Beams still running at ``max_new_tokens`` are finished
    as they are.
    """
    check_common(prompt, max_new_tokens, min_new_tokens, repetition_penalty)
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    if not 1 <= num_return_sequences <= num_beams:
        raise ValueError(f"num_return_sequences must be in 1..num_beams ({num_beams}), got {num_return_sequences}")
    length_penalty_factor(1, length_penalty, length_penalty_style)  # validates the style
    expand_state = expand_state or default_expand
    reorder_state = reorder_state or default_reorder

    def lp(length: int) -> float:
        return length_penalty_factor(length, length_penalty, length_penalty_style)

    batch, k, device = prompt.shape[0], num_beams, prompt.device
    tokens = prompt.repeat_interleave(k, dim=0)  # (B*K, T)
    state = expand_state(state, k) if state is not None else None
    # all K beams start identical: only beam 0 may expand at the first step
    beam_scores = torch.full((batch, k), float("-inf"), device=device)
    beam_scores[:, 0] = 0.0
    hyps: list[list[tuple[float, torch.Tensor, float, int]]] = [[] for _ in range(batch)]
    done = [False] * batch
    generated = 0
    for step in range(max_new_tokens):
        logits, state = run_step(step_fn, tokens, state)
        logits = process_logits(logits, tokens, step, eos_token_id, min_new_tokens, repetition_penalty)
        vocab = logits.shape[-1]
        cand = (beam_scores.reshape(-1, 1) + F.log_softmax(logits, dim=-1)).view(batch, k * vocab)
        top_scores, top_idx = cand.topk(min(2 * k, k * vocab), dim=1)
        top_scores, top_idx = top_scores.tolist(), top_idx.tolist()
        generated = step + 1

        # built as Python lists and moved once: per-element writes would be one device op each
        next_scores = [[float("-inf")] * k for _ in range(batch)]
        next_tokens = [[pad_token_id] * k for _ in range(batch)]
        origin = [[b * k + j for j in range(k)] for b in range(batch)]
        for b in range(batch):
            if done[b]:
                continue
            filled = 0
            for rank, (score, idx) in enumerate(zip(top_scores[b], top_idx[b])):
                beam, tok = divmod(idx, vocab)
                if score == float("-inf"):
                    break
                if eos_token_id is not None and tok == eos_token_id:
                    if rank < k:
                        seq = torch.cat([tokens[b * k + beam], tokens.new_tensor([tok])])
                        hyps[b].append((score / lp(generated), seq, score, generated))
                    continue
                next_scores[b][filled] = score
                next_tokens[b][filled] = tok
                origin[b][filled] = b * k + beam
                filled += 1
                if filled == k:
                    break
            hyps[b].sort(key=lambda h: h[0], reverse=True)
            del hyps[b][k:]
            if len(hyps[b]) == k:
                if early_stopping:
                    done[b] = True
                else:
                    best_running = next_scores[b][0]
                    bound = best_running / max(lp(generated), lp(max_new_tokens))
                    done[b] = best_running == float("-inf") or hyps[b][-1][0] >= bound
        flat_origin = torch.tensor(origin, device=device).view(-1)
        new_column = torch.tensor(next_tokens, dtype=torch.long, device=device).view(-1, 1)
        tokens = torch.cat([tokens.index_select(0, flat_origin), new_column], dim=1)
        if state is not None:
            state = reorder_state(state, flat_origin)
        beam_scores = torch.tensor(next_scores, device=device)
        if all(done):
            break

    # beams still running at the length limit are finished as they are
    for b in range(batch):
        if done[b]:
            continue
        for j in range(k):
            score = beam_scores[b, j].item()
            if score != float("-inf"):
                hyps[b].append((score / lp(generated), tokens[b * k + j], score, generated))
        hyps[b].sort(key=lambda h: h[0], reverse=True)

    best, best_scores, best_lengths, returned, returned_scores = [], [], [], [], []
    for b in range(batch):
        if not hyps[b]:
            raise RuntimeError(f"beam search found no finite-score hypothesis for batch item {b}")
        top = hyps[b][:num_return_sequences]
        while len(top) < num_return_sequences:  # only when fewer beams than asked survive
            top.append(top[-1])
        best.append(top[0][1])
        best_scores.append(top[0][0])
        best_lengths.append(top[0][3])
        returned.extend(h[1] for h in top)
        returned_scores.append([h[0] for h in top])
    all_seqs = _pad_stack(best + returned, pad_token_id)
    beams = all_seqs[batch:].view(batch, num_return_sequences, -1)
    return GenerationOutput(
        tokens=all_seqs[:batch],
        scores=torch.tensor(best_scores, device=device),
        lengths=torch.tensor(best_lengths, dtype=torch.long, device=device),
        prompt_length=prompt.shape[1],
        beams=beams,
        beam_scores=torch.tensor(returned_scores, device=device),
    )


__all__ = ["beam_search"]
