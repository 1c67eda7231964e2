"""Masking strategies: specials, whole words, spans, and the 80/10/10 replacement."""

import math

import pytest
import torch

from vlp.objectives.masking import (
    IGNORE,
    corrupt,
    maskable_positions,
    sample_span_lengths,
    select_random,
    select_spans,
    select_whole_words,
    word_starts,
)

PAD, CLS, SEP, MASK = 0, 2, 3, 4


def random_captions(batch: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``[CLS] pieces [SEP] [PAD]..`` with words of 1-4 sub-words; returns ids, attention mask, word_ids."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((batch, length), PAD)
    word_ids = torch.full((batch, length), -1)
    for b in range(batch):
        n = int(torch.randint(1, length - 1, (1,), generator=g))
        ids[b, 0], ids[b, n + 1] = CLS, SEP
        ids[b, 1 : n + 1] = torch.randint(10, 100, (n,), generator=g)
        t, w = 1, 0
        while t <= n:
            k = min(int(torch.randint(1, 5, (1,), generator=g)), n + 1 - t)
            word_ids[b, t : t + k] = w
            t, w = t + k, w + 1
    return ids, ids != PAD, word_ids


def words_of(word_ids_row: list[int]) -> list[list[int]]:
    """Token positions of each word, computed naively from the row."""
    words: dict[int, list[int]] = {}
    for t, w in enumerate(word_ids_row):
        if w >= 0:
            words.setdefault(w, []).append(t)
    return list(words.values())


def test_word_starts_on_a_hand_built_row() -> None:
    word_ids = torch.tensor([[-1, 0, 0, 1, 2, 2, 2, -1, -1]])
    assert word_starts(word_ids).nonzero()[:, 1].tolist() == [1, 3, 4]


def test_specials_are_never_maskable() -> None:
    ids, attention, word_ids = random_captions(16, 12, 0)
    for kwargs in ({"word_ids": word_ids}, {"special_ids": [PAD, CLS, SEP]}, {}):
        keep = maskable_positions(ids, attention, **kwargs)
        assert not keep[torch.isin(ids, torch.tensor([PAD, CLS, SEP]))].any(), kwargs
        assert keep.sum() == (word_ids >= 0).sum()  # and every real word piece is maskable


@pytest.mark.parametrize("strategy", ["random", "whole_word", "span"])
def test_no_strategy_masks_a_special(strategy: str) -> None:
    ids, attention, word_ids = random_captions(64, 16, 1)
    maskable = maskable_positions(ids, attention, word_ids)
    g = torch.Generator().manual_seed(0)
    if strategy == "random":
        selected = select_random(maskable, 0.5, g)
    elif strategy == "whole_word":
        selected = select_whole_words(word_ids, maskable, 0.5, g)
    else:
        selected = select_spans(word_ids, maskable, 0.5, g)
    assert selected.any()
    assert not selected[torch.isin(ids, torch.tensor([PAD, CLS, SEP]))].any()


@pytest.mark.parametrize("strategy", ["whole_word", "span"])
def test_words_are_never_split(strategy: str) -> None:
    for seed in range(30):
        ids, attention, word_ids = random_captions(8, 20, seed)
        maskable = maskable_positions(ids, attention, word_ids)
        g = torch.Generator().manual_seed(seed)
        select = select_whole_words if strategy == "whole_word" else select_spans
        selected = select(word_ids, maskable, 0.3, g)
        for b in range(8):
            for word in words_of(word_ids[b].tolist()):
                states = {bool(selected[b, t]) for t in word}
                assert len(states) == 1, f"seed {seed} row {b}: word at {word} split"


def test_whole_word_rate_is_per_word() -> None:
    ids, attention, word_ids = random_captions(400, 24, 2)
    maskable = maskable_positions(ids, attention, word_ids)
    selected = select_whole_words(word_ids, maskable, 0.15, torch.Generator().manual_seed(0))
    starts = word_starts(word_ids)
    rate = (selected & starts).sum() / starts.sum()
    assert rate.item() == pytest.approx(0.15, abs=0.015)


def test_span_lengths_follow_the_clipped_geometric() -> None:
    p, cap = 0.2, 10
    lengths = sample_span_lengths(50_000, p, cap, torch.Generator().manual_seed(0))
    assert lengths.min() == 1 and lengths.max() == cap
    # P(L = k) = (1-p)^(k-1) p for k < cap; the tail mass (1-p)^(cap-1) sits at cap
    mean = sum(k * (1 - p) ** (k - 1) * p for k in range(1, cap)) + cap * (1 - p) ** (cap - 1)
    assert lengths.float().mean().item() == pytest.approx(mean, rel=0.02)
    assert (lengths == 1).float().mean().item() == pytest.approx(p, abs=0.01)
    assert (lengths == cap).float().mean().item() == pytest.approx((1 - p) ** (cap - 1), abs=0.01)
    assert torch.equal(sample_span_lengths(5, 1.0, cap), torch.ones(5, dtype=torch.long))


def test_spans_are_contiguous_whole_words_within_budget() -> None:
    # one token per word, 40 words: spans are visible as runs
    length = 42
    ids = torch.randint(10, 100, (200, length), generator=torch.Generator().manual_seed(0))
    ids[:, 0], ids[:, -1] = CLS, SEP
    word_ids = torch.arange(-1, length - 1).repeat(200, 1)
    word_ids[:, -1] = -1
    maskable = maskable_positions(ids, ids != PAD, word_ids)
    selected = select_spans(word_ids, maskable, 0.15, torch.Generator().manual_seed(1), p=0.2, max_span=10)
    counts = selected.sum(1).float()
    # the budget is 0.15 * 40 = 6 tokens per row; a span never overshoots it
    assert counts.max() <= 6 and counts.mean() >= 5.5
    runs = []
    for row in selected.tolist():
        run = 0
        for flag in row + [False]:
            if flag:
                run += 1
            elif run:
                runs.append(run)
                run = 0
    # spans are longer than single words on average (mean ~3 under the 6-token budget), unlike whole-word masking
    assert sum(runs) / len(runs) > 2.0


def test_span_budget_with_multi_piece_words() -> None:
    ids, attention, word_ids = random_captions(300, 30, 3)
    maskable = maskable_positions(ids, attention, word_ids)
    selected = select_spans(word_ids, maskable, 0.15, torch.Generator().manual_seed(0))
    rate = selected.sum() / maskable.sum()
    assert rate.item() == pytest.approx(0.15, abs=0.015)  # whole words, yet the budget holds on average


def test_replacement_is_80_10_10() -> None:
    n = 200_000
    ids = torch.randint(10, 50, (1, n), generator=torch.Generator().manual_seed(0))
    selected = torch.rand(1, n, generator=torch.Generator().manual_seed(1)) < 0.5
    random_ids = torch.arange(5, 50)
    out, labels = corrupt(ids, selected, MASK, random_ids, torch.Generator().manual_seed(2))
    k = selected.sum().item()
    masked = (out == MASK) & selected
    changed = (out != ids) & (out != MASK) & selected
    unchanged = (out == ids) & selected
    # a random draw equals the original token with probability 1/45: those land in "unchanged"
    assert masked.sum().item() / k == pytest.approx(0.8, abs=0.005)
    assert changed.sum().item() / k == pytest.approx(0.1 * 44 / 45, abs=0.005)
    assert unchanged.sum().item() / k == pytest.approx(0.1 + 0.1 / 45, abs=0.005)
    assert torch.equal(out[~selected], ids[~selected])  # nothing else is touched
    assert torch.isin(out[changed], random_ids).all()
    assert torch.equal(labels[selected], ids[selected]) and (labels[~selected] == IGNORE).all()
    # the statistical check is sensitive: 3 standard deviations of the 10 % share is ~0.002 here
    assert math.sqrt(0.1 * 0.9 / k) < 0.002


def test_masks_are_reproducible_with_a_seed() -> None:
    ids, attention, word_ids = random_captions(8, 16, 4)
    maskable = maskable_positions(ids, attention, word_ids)
    a = select_spans(word_ids, maskable, 0.3, torch.Generator().manual_seed(5))
    b = select_spans(word_ids, maskable, 0.3, torch.Generator().manual_seed(5))
    c = select_spans(word_ids, maskable, 0.3, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
