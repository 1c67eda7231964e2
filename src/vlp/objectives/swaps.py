"""Word-swap hard negatives (NegCLIP, Yuksekgonul et al. 2023, "When and why vision-language models behave
like bags-of-words"): a matched caption with one attribute word replaced by another of its kind ("a red
circle" -> "a red square") is a caption that is wrong for its image in exactly one word.

Random in-batch negatives usually differ from the positive in many words, so a model can tell them apart by
whichever word is easiest to see (colour, count) and never learn the others (shape). A swap negative can only
be rejected by looking at the swapped word's referent.

Groups come from the recipe as lists of interchangeable words; synonyms of one concept are joined with
``/`` (``[circle/disc, square/box, triangle]``) so that "circle" is never swapped for its synonym "disc"
(which would be a true caption labelled false). The words are resolved to token ids once
(:func:`resolve_swap_groups`), and swapping works on token ids: a word is swappable only where it is one
whole word of one token (with ``word_ids``, a token that is the first piece of a longer word is not).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vlp.config import ConfigError

SYNONYM_SEP = "/"


@dataclass
class SwapTable:
    """Token-level swap groups.

    ``token_concept`` ``(V,)`` long: the concept index of each token id, -1 for tokens in no group.
    ``replacement`` ``(C, T)`` float: for concept ``c``, the probability of each of the ``T`` group tokens
    ``tokens`` ``(T,)`` as its replacement: uniform over the *other* concepts of ``c``'s group, then uniform
    over that concept's words (so a concept with two synonyms is not drawn twice as often).
    ``skipped``: the recipe words that are not one token of the vocabulary (left out).
    """

    token_concept: torch.Tensor
    replacement: torch.Tensor
    tokens: torch.Tensor
    skipped: list[str]


def _single_token(tokenizer: Any, word: str) -> int | None:
    """The id of ``word`` if the tokenizer encodes it as exactly one known token, else None."""
    encoded = tokenizer([word])
    ids = encoded.input_ids[0][encoded.attention_mask[0].bool()].tolist()
    framing = {getattr(tokenizer, f"{k}_id", None) for k in ("pad", "cls", "sep")}  # [CLS] word [SEP]
    pieces = [i for i in ids if i not in framing]
    unknown = getattr(tokenizer, "unk_id", None)
    if len(pieces) != 1 or pieces[0] == unknown:
        return None
    return int(pieces[0])


def resolve_swap_groups(groups: Sequence[Sequence[str]], tokenizer: Any, vocab_size: int) -> SwapTable:
    """Resolve recipe swap groups (lists of ``"word"`` or ``"word/synonym"`` entries) to a :class:`SwapTable`.

    A word that the tokenizer does not encode as one known token (unknown, or split into pieces) is skipped
    and listed in ``skipped``: it simply never gets swapped. A group with fewer than two concepts left
    cannot produce a negative and is an error, as is a token id claimed by two concepts.
    """
    concept_tokens: list[list[int]] = []
    concept_group: list[int] = []
    owner: dict[int, str] = {}
    skipped: list[str] = []
    for g, group in enumerate(groups):
        where = f"objectives.itm.swap_words[{g}]"
        if isinstance(group, str) or not isinstance(group, Sequence):
            raise ConfigError(f"{where}: expected a list of words (synonyms joined by '/'), got {group!r}")
        kept = 0
        for entry in group:
            if not isinstance(entry, str) or not entry.strip(SYNONYM_SEP + " "):
                raise ConfigError(f"{where}: expected words like 'circle' or 'circle/disc', got {entry!r}")
            ids = []
            for word in (w.strip() for w in entry.split(SYNONYM_SEP) if w.strip()):
                token = _single_token(tokenizer, word)
                if token is None:
                    skipped.append(word)
                    continue
                if token in owner:
                    raise ConfigError(f"{where}: word {word!r} (token {token}) is already in the swap entry "
                                      f"{owner[token]!r}; each word may name one concept only")  # fmt: skip
                owner[token] = entry
                ids.append(token)
            if ids:
                concept_tokens.append(ids)
                concept_group.append(g)
                kept += 1
        if kept < 2:
            raise ConfigError(
                f"{where}: {kept} of its entries {list(group)} are single tokens of the vocabulary; "
                "a swap group needs at least two (skipped words: " + (", ".join(skipped) or "none") + ")"
            )
    tokens = torch.tensor([t for ids in concept_tokens for t in ids], dtype=torch.long)
    token_concept = torch.full((vocab_size,), -1, dtype=torch.long)
    column_concept = []
    for c, ids in enumerate(concept_tokens):
        if max(ids) >= vocab_size:
            raise ConfigError(f"objectives.itm.swap_words: token id {max(ids)} is outside the vocabulary "
                              f"of {vocab_size}")  # fmt: skip
        token_concept[ids] = c
        column_concept += [c] * len(ids)
    column_concept_t = torch.tensor(column_concept)
    group_t = torch.tensor(concept_group)
    sizes = torch.tensor([len(ids) for ids in concept_tokens], dtype=torch.float)
    same_group = group_t[:, None] == group_t[column_concept_t][None, :]  # (C, T)
    other = same_group & (torch.arange(len(concept_tokens))[:, None] != column_concept_t[None, :])
    # uniform over the other concepts of the group, then over each concept's words
    others_count = torch.bincount(group_t, minlength=len(groups))[group_t] - 1  # (C,)
    replacement = other.float() / sizes[column_concept_t][None, :] / others_count[:, None].float()
    return SwapTable(token_concept, replacement, tokens, skipped)


def swappable_positions(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, token_concept: torch.Tensor, word_ids: torch.Tensor | None
) -> torch.Tensor:
    """``(B, L)`` bool: tokens of a swap group that are a whole word on their own.

    ``word_ids`` ``(B, L')`` with ``L' <= L`` (the caption part when tags were appended after it): a token
    counts only if its word has no other piece; without ``word_ids`` every group token counts.
    """
    found = (token_concept[input_ids] >= 0) & attention_mask.bool()
    if word_ids is not None:
        words = torch.full_like(input_ids, -1)
        words[:, : word_ids.shape[1]] = word_ids
        pad = torch.full_like(words[:, :1], -1)
        before = torch.cat([pad, words[:, :-1]], dim=1)
        after = torch.cat([words[:, 1:], pad], dim=1)
        found &= (words >= 0) & (before != words) & (after != words)
    return found


def draw_swaps(
    input_ids: torch.Tensor,
    positions: torch.Tensor,
    table: SwapTable,
    fraction: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Swap one word in each row that has a swappable position (kept with probability ``fraction``).

    ``input_ids`` ``(B, L)``, ``positions`` ``(B, L)`` bool from :func:`swappable_positions`. Returns
    ``(rows (S,) long, swapped_ids (S, L) long)``: the source rows and their ids with one swappable token,
    chosen uniformly, replaced by a token of another concept of its group.
    """
    device = input_ids.device
    has = positions.any(1)
    if fraction < 1.0:
        has &= torch.rand(has.shape, generator=generator, device=device) < fraction
    rows = torch.nonzero(has).squeeze(1)
    if rows.numel() == 0:
        return rows, input_ids[:0]
    where = torch.multinomial(positions[rows].float(), 1, generator=generator).squeeze(1)  # (S,)
    old = input_ids[rows, where]
    choice = torch.multinomial(table.replacement[table.token_concept[old]], 1, generator=generator).squeeze(1)
    swapped = input_ids[rows].clone()
    swapped[torch.arange(rows.numel(), device=device), where] = table.tokens[choice]
    return rows, swapped
