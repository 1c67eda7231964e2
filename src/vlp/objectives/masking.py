"""Choosing and corrupting text tokens for masked language modelling.

Three ways to choose what to mask, each over the *maskable* positions (real
tokens that are not [CLS]/[SEP]/[PAD] or another special id):

- ``random``: every token independently with probability ``prob`` (BERT);
- ``whole_word``: every word independently with probability ``prob``, all of its
  sub-words together (ViLT); words are the runs of equal ``word_ids >= 0``;
- ``span``: contiguous spans of whole words (SpanBERT, used by InterBERT) with
  a length in words drawn from a geometric distribution clipped at ``max_span``,
  until a budget of ``prob`` of the maskable tokens is reached.

The chosen tokens are then replaced 80/10/10: [MASK], a random vocabulary token
(never a special one), or left unchanged. Every random draw takes an optional
``torch.Generator`` so masks are reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

IGNORE = -100  # label of positions that do not count in the loss (cross_entropy's ignore_index)


def maskable_positions(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    word_ids: torch.Tensor | None = None,
    special_ids: Sequence[int] | torch.Tensor = (),
) -> torch.Tensor:
    """``(B, L)`` bool: real tokens that may be masked.

    Specials are recognised three ways, any of which suffices: ``word_ids == -1``
    (the tokenizer's marker for [CLS]/[SEP]/[PAD]), membership in ``special_ids``,
    and — when neither is available — the layout ``[CLS] w1..wn [SEP]`` (first and
    last real token).
    """
    keep = attention_mask.bool().clone()
    if word_ids is not None:
        keep &= word_ids >= 0
    if len(special_ids):
        keep &= ~torch.isin(input_ids, torch.as_tensor(special_ids, device=input_ids.device))
    if word_ids is None and not len(special_ids):
        lengths = attention_mask.long().sum(1)
        keep[:, 0] = False
        keep[torch.arange(len(keep), device=keep.device), (lengths - 1).clamp_min(0)] = False
    return keep


def uniform(shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    """Uniform [0, 1) draws; on the generator's device when one is given (move the result if needed)."""
    if generator is not None:
        device = generator.device
    return torch.rand(shape, device=device, generator=generator)


def select_random(maskable: torch.Tensor, prob: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each maskable token with probability ``prob`` -> ``(B, L)`` bool."""
    return maskable & (uniform(tuple(maskable.shape), maskable.device, generator).to(maskable.device) < prob)


def word_starts(word_ids: torch.Tensor) -> torch.Tensor:
    """``(B, L)`` bool: the first sub-word of each word (a run of equal ``word_ids >= 0``)."""
    previous = torch.cat([torch.full_like(word_ids[:, :1], -1), word_ids[:, :-1]], dim=1)
    return (word_ids >= 0) & (word_ids != previous)


def select_whole_words(
    word_ids: torch.Tensor, maskable: torch.Tensor, prob: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Each word with probability ``prob``, all its sub-words at once -> ``(B, L)`` bool."""
    starts = word_starts(word_ids) & maskable
    # number every word of the batch 0..W-1; token t of a word carries the word's number
    run = torch.cumsum(starts.flatten().long(), 0).view_as(word_ids) - 1
    chosen = uniform((int(starts.sum()),), word_ids.device, generator).to(word_ids.device) < prob
    in_word = maskable & (word_ids >= 0) & (run >= 0)
    return in_word & chosen[run.clamp_min(0)] if chosen.numel() else torch.zeros_like(maskable)


def sample_span_lengths(
    count: int, p: float = 0.2, max_span: int = 10, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``count`` span lengths ~ Geometric(p) on {1, 2, ...}, clipped at ``max_span`` (SpanBERT: p=0.2, 10)."""
    u = 1.0 - uniform((count,), torch.device("cpu"), generator).cpu()  # in (0, 1]
    if p >= 1.0:
        return torch.ones(count, dtype=torch.long)
    lengths = torch.floor(torch.log(u) / math.log(1.0 - p)).long() + 1  # inverse CDF
    return lengths.clamp(1, max_span)


def select_spans(
    word_ids: torch.Tensor,
    maskable: torch.Tensor,
    prob: float,
    generator: torch.Generator | None = None,
    p: float = 0.2,
    max_span: int = 10,
) -> torch.Tensor:
    """Contiguous spans of whole words until ``prob`` of each row's maskable tokens are masked.

    Per row: the budget is ``prob * n`` tokens (stochastically rounded, so its mean
    is exact); a span starts at a random unmasked word and extends over up to
    ``length`` consecutive unmasked words. A word that would overshoot the budget
    is taken with probability (budget left) / (its size) and ends the row, so the
    expected number of masked tokens stays ``prob * n`` although words are whole.
    """
    batch, length = word_ids.shape
    # plain Python lists: the loop below touches single elements, which is slow on tensors
    starts = (word_starts(word_ids) & maskable).tolist()
    ids, keep = word_ids.tolist(), maskable.tolist()
    tries = max(4, 2 * length)  # random draws prepared per row; masking stops when they run out
    draws = uniform((batch, 2 * tries + 1), word_ids.device, generator).tolist()
    lengths = sample_span_lengths(batch * tries, p, max_span, generator).view(batch, tries).tolist()
    selected = [[False] * length for _ in range(batch)]
    for b in range(batch):
        # token range [s, e) of each word: its start and the following pieces of the same word id
        words = []
        for s in (t for t in range(length) if starts[b][t]):
            e = s + 1
            while e < length and ids[b][e] == ids[b][s] and keep[b][e] and not starts[b][e]:
                e += 1
            words.append((s, e))
        if not words:
            continue
        budget = math.floor(prob * sum(e - s for s, e in words) + draws[b][-1])
        used, taken = 0, [False] * len(words)
        for k in range(tries):
            if used >= budget:
                break
            w = min(int(draws[b][k] * len(words)), len(words) - 1)
            for _ in range(lengths[b][k]):
                if w >= len(words) or taken[w]:
                    break
                s, e = words[w]
                if used + e - s > budget:
                    if draws[b][tries + k] * (e - s) < budget - used:
                        selected[b][s:e] = [True] * (e - s)
                    used = budget  # the row is done either way
                    break
                taken[w], used = True, used + e - s
                selected[b][s:e] = [True] * (e - s)
                w += 1
    return torch.tensor(selected, dtype=torch.bool, device=word_ids.device).reshape(batch, length)


def corrupt(
    input_ids: torch.Tensor,
    selected: torch.Tensor,
    mask_id: int,
    random_ids: torch.Tensor,
    generator: torch.Generator | None = None,
    mask_frac: float = 0.8,
    random_frac: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace the ``selected`` tokens: ``mask_frac`` -> ``mask_id``, ``random_frac`` -> a token drawn
    uniformly from ``random_ids`` (1-D), the rest unchanged. Returns ``(corrupted ids, labels)`` with
    labels the original id at selected positions and -100 elsewhere."""
    device = input_ids.device
    u = uniform(tuple(input_ids.shape), device, generator).to(device)
    pick = (uniform(tuple(input_ids.shape), device, generator).to(device) * len(random_ids)).long()
    random_tokens = random_ids.to(device)[pick.clamp_max(len(random_ids) - 1)]
    out = torch.where(selected & (u < mask_frac), torch.full_like(input_ids, mask_id), input_ids)
    out = torch.where(selected & (u >= mask_frac) & (u < mask_frac + random_frac), random_tokens, out)
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE))
    return out, labels
