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
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

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


def _expand_state(state: Any, k: int) -> Any:
    return map_tensors(state, lambda t: t.repeat_interleave(k, dim=0))


def _reorder_state(state: Any, index: torch.Tensor) -> Any:
    return map_tensors(state, lambda t: t.index_select(0, index.to(t.device)))


def _call(step_fn: StepFn, tokens: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
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


def _check_common(prompt: torch.Tensor, max_new_tokens: int, min_new_tokens: int, repetition_penalty: float) -> None:
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


# ----------------------------------------------------------------------------- greedy / sampling


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
    _check_common(prompt, max_new_tokens, min_new_tokens, repetition_penalty)
    tokens = prompt
    rows = prompt.shape[0]
    finished = torch.zeros(rows, dtype=torch.bool, device=prompt.device)
    scores = torch.zeros(rows, device=prompt.device)
    lengths = torch.zeros(rows, dtype=torch.long, device=prompt.device)
    for step in range(max_new_tokens):
        logits, state = _call(step_fn, tokens, state)
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


# ----------------------------------------------------------------------------- beam search


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
    _check_common(prompt, max_new_tokens, min_new_tokens, repetition_penalty)
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    if not 1 <= num_return_sequences <= num_beams:
        raise ValueError(f"num_return_sequences must be in 1..num_beams ({num_beams}), got {num_return_sequences}")
    length_penalty_factor(1, length_penalty, length_penalty_style)  # validates the style
    expand_state = expand_state or _expand_state
    reorder_state = reorder_state or _reorder_state

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
        logits, state = _call(step_fn, tokens, state)
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


def generate(step_fn: StepFn, prompt: torch.Tensor, method: str = "greedy", **kwargs: Any) -> GenerationOutput:
    """Dispatch to :func:`greedy_decode`, :func:`beam_search` or :func:`sample_decode` by name."""
    methods = {"greedy": greedy_decode, "beam": beam_search, "sample": sample_decode}
    if method not in methods:
        raise ValueError(f"unknown decoding method {method!r}; allowed: {', '.join(methods)}")
    return methods[method](step_fn, prompt, **kwargs)


__all__ = [
    "GenerationOutput",
    "StepFn",
    "beam_search",
    "generate",
    "greedy_decode",
    "length_penalty_factor",
    "map_tensors",
    "process_logits",
    "sample_decode",
    "top_p_mask",
]
