"""Decoding on hand-built Markov "models" whose best sequences can be enumerated."""

import itertools
import math

import pytest
import torch

from vlp.tasks.decoding import (
    beam_search,
    generate,
    greedy_decode,
    length_penalty_factor,
    process_logits,
    sample_decode,
    top_p_mask,
)


def markov(probs: list[list[float]]):
    """A step function whose next-token distribution depends only on the last token."""
    table = torch.tensor(probs).clamp_min(1e-12).log()

    def step(tokens, state):
        return table[tokens[:, -1]]

    return step, table


def enumerate_best(table, start, max_new, eos, alpha=0.0, style="power"):
    """Exhaustive search over every sequence beam search could return."""
    vocab = table.shape[0]
    best = None
    for n in range(1, max_new + 1):
        for seq in itertools.product(range(vocab), repeat=n):
            if eos is not None and (eos in seq[:-1] or (n < max_new and seq[-1] != eos)):
                continue
            if eos is None and n < max_new:
                continue
            prev, total = start, 0.0
            for tok in seq:
                total += table[prev, tok].item()
                prev = tok
            score = total / length_penalty_factor(n, alpha, style)
            if best is None or score > best[0]:
                best = (score, list(seq))
    return best


def test_greedy_equals_argmax_rollout():
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(6, 6, generator=gen) * 2, dim=-1)
    step, table = markov(probs.tolist())
    prompt = torch.tensor([[0], [3], [5]])
    out = greedy_decode(step, prompt, max_new_tokens=7)
    for b, start in enumerate([0, 3, 5]):
        prev, expected, logp = start, [], 0.0
        for _ in range(7):
            nxt = int(table[prev].argmax())
            expected.append(nxt)
            logp += table[prev, nxt].item()
            prev = nxt
        assert out.new_tokens[b].tolist() == expected
        assert out.scores[b].item() == pytest.approx(logp, abs=1e-5)
    assert out.lengths.tolist() == [7, 7, 7]


# tokens: 0 = BOS, 1 = "x", 2 = "y", 3 = EOS. Greedy takes "x" (0.5) but "x" leads nowhere good;
# "y" (0.4) is followed by a near-certain EOS.
TRAP = [
    [0.0, 0.5, 0.4, 0.1],
    [0.0, 0.34, 0.33, 0.33],
    [0.0, 0.05, 0.05, 0.9],
    [0.25, 0.25, 0.25, 0.25],
]


def test_beam_finds_global_best_where_greedy_fails():
    step, table = markov(TRAP)
    prompt = torch.tensor([[0]])
    greedy = greedy_decode(step, prompt, max_new_tokens=3, eos_token_id=3)
    beam = beam_search(step, prompt, num_beams=2, max_new_tokens=3, eos_token_id=3, length_penalty=0.0)
    best_score, best_seq = enumerate_best(table, 0, 3, eos=3)
    assert best_seq == [2, 3]  # log(0.4 * 0.9) beats every sequence starting with "x"
    assert beam.new_tokens[0].tolist() == best_seq
    assert beam.scores[0].item() == pytest.approx(best_score, abs=1e-5)
    assert greedy.new_tokens[0, 0].item() == 1  # greedy commits to "x"
    assert greedy.scores[0].item() < best_score


@pytest.mark.parametrize("alpha, style", [(0.0, "power"), (1.0, "power"), (-0.5, "power"), (0.6, "gnmt")])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wide_beam_is_exact(alpha, style, seed):
    # with a beam as wide as the number of prefixes, the exact stopping bound makes beam search exhaustive
    gen = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(3, 3, generator=gen) * 1.5, dim=-1)
    step, table = markov(probs.tolist())
    prompt = torch.tensor([[0], [1]])
    out = beam_search(
        step, prompt, num_beams=64, max_new_tokens=4, eos_token_id=2, length_penalty=alpha, length_penalty_style=style
    )
    for b in range(2):
        best_score, best_seq = enumerate_best(table, b, 4, eos=2, alpha=alpha, style=style)
        assert out.scores[b].item() == pytest.approx(best_score, abs=1e-5)
        got = out.new_tokens[b, : out.lengths[b]].tolist()
        assert got == best_seq


def test_beam_without_eos_runs_to_max_length():
    step, table = markov(TRAP)
    out = beam_search(step, torch.tensor([[0]]), num_beams=16, max_new_tokens=3, length_penalty=0.0)
    best_score, best_seq = enumerate_best(table, 0, 3, eos=None)
    assert out.new_tokens[0].tolist() == best_seq
    assert out.scores[0].item() == pytest.approx(best_score, abs=1e-5)
    assert out.lengths.tolist() == [3]


def test_length_penalty_changes_the_winner_by_hand():
    # 0 = BOS, 1 = word, 2 = EOS. Candidates: [EOS] p=.4; [w, EOS] p=.6*.6=.36; [w, w] p=.24 (cut at 2)
    step, _ = markov([[0.0, 0.6, 0.4], [0.0, 0.4, 0.6], [1 / 3, 1 / 3, 1 / 3]])
    prompt = torch.tensor([[0]])
    kwargs = {"num_beams": 2, "max_new_tokens": 2, "eos_token_id": 2}
    raw = beam_search(step, prompt, length_penalty=0.0, **kwargs)
    assert raw.new_tokens[0, :1].tolist() == [2]  # log .4 = -0.92 > log .36 = -1.02
    assert raw.scores[0].item() == pytest.approx(math.log(0.4), abs=1e-5)
    normed = beam_search(step, prompt, length_penalty=1.0, **kwargs)
    assert normed.new_tokens[0].tolist() == [1, 2]  # log .36 / 2 = -0.51 > -0.92 and log .24 / 2 = -0.71
    assert normed.scores[0].item() == pytest.approx(math.log(0.36) / 2, abs=1e-5)
    assert normed.beams.shape == (1, 1, 3)


def test_num_return_sequences_sorted():
    step, _ = markov([[0.0, 0.6, 0.4], [0.0, 0.4, 0.6], [1 / 3, 1 / 3, 1 / 3]])
    out = beam_search(step, torch.tensor([[0]]), num_beams=3, max_new_tokens=2, eos_token_id=2, num_return_sequences=3)
    scores = out.beam_scores[0].tolist()
    assert scores == sorted(scores, reverse=True)
    assert scores == pytest.approx([math.log(0.36) / 2, math.log(0.24) / 2, math.log(0.4)], abs=1e-5)


def test_min_new_tokens_and_eos_padding():
    step, _ = markov(TRAP)
    prompt = torch.tensor([[0], [2]])  # row 1 starts after "y": EOS is next
    out = greedy_decode(step, prompt, max_new_tokens=4, eos_token_id=3, pad_token_id=0)
    assert out.new_tokens[1].tolist() == [3, 0, 0, 0]
    assert out.lengths[1].item() == 1
    forced = greedy_decode(step, prompt, max_new_tokens=4, eos_token_id=3, min_new_tokens=2)
    assert 3 not in forced.new_tokens[1, :2].tolist()


def test_repetition_penalty_by_hand():
    logits = torch.tensor([[2.0, -2.0, 1.0]])
    out = process_logits(logits, torch.tensor([[0, 1]]), 0, None, 0, 2.0)
    assert out.tolist() == [[1.0, -4.0, 1.0]]  # seen tokens: positive / 2, negative * 2


def test_nucleus_never_leaves_top_p_set_and_is_seeded():
    probs = torch.tensor([0.5, 0.3, 0.1, 0.06, 0.04])
    table = probs.log().expand(5, 5)

    def step(tokens, state):
        return table[tokens[:, -1]]

    prompt = torch.zeros(4000, 1, dtype=torch.long)
    assert top_p_mask(probs[None], 0.85)[0].tolist() == [True, True, True, False, False]
    out = sample_decode(step, prompt, max_new_tokens=1, top_p=0.85, generator=torch.Generator().manual_seed(0))
    drawn = out.new_tokens[:, 0]
    assert set(drawn.tolist()) == {0, 1, 2}
    # renormalized nucleus: 0.5/0.9, 0.3/0.9, 0.1/0.9
    assert (drawn == 0).float().mean().item() == pytest.approx(0.5 / 0.9, abs=0.03)
    again = sample_decode(step, prompt, max_new_tokens=1, top_p=0.85, generator=torch.Generator().manual_seed(0))
    other = sample_decode(step, prompt, max_new_tokens=1, top_p=0.85, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again.tokens, out.tokens)
    assert not torch.equal(other.tokens, out.tokens)
    cold = sample_decode(step, prompt[:50], max_new_tokens=1, temperature=1e-3, generator=torch.Generator())
    assert cold.new_tokens.unique().tolist() == [0]  # temperature -> 0 is greedy


def test_state_is_expanded_and_reordered_with_beams():
    # a KV-cache-like state: what the model has consumed so far (here the sum of those tokens);
    # the step checks that the state handed to it belongs to the row's own prefix
    gen = torch.Generator().manual_seed(3)
    table = torch.softmax(torch.randn(5, 5, generator=gen) * 2, dim=-1).log()

    def step(tokens, state):
        assert torch.equal(state["seen"], tokens[:, :-1].sum(1)), "state was not reordered with its beam"
        return table[tokens[:, -1]], {"seen": state["seen"] + tokens[:, -1]}

    prompt = torch.tensor([[1], [4]])
    kwargs = {"num_beams": 3, "max_new_tokens": 5, "eos_token_id": 0}
    out = beam_search(step, prompt, state={"seen": torch.zeros(2, dtype=torch.long)}, **kwargs)
    for b in range(2):  # batching does not change any row's result
        one = beam_search(step, prompt[b : b + 1], state={"seen": torch.zeros(1, dtype=torch.long)}, **kwargs)
        assert out.new_tokens[b, : out.lengths[b]].tolist() == one.new_tokens[0, : one.lengths[0]].tolist()
        assert out.scores[b].item() == pytest.approx(one.scores[0].item(), abs=1e-6)


def test_full_prefix_logits_accepted():
    step, table = markov(TRAP)

    def full(tokens, state):
        return table[tokens]  # (B, T, V): logits for every position

    a = greedy_decode(step, torch.tensor([[0]]), max_new_tokens=3)
    b = generate(full, torch.tensor([[0]]), "greedy", max_new_tokens=3)
    assert torch.equal(a.tokens, b.tokens)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"prompt": torch.tensor([[0.0]])}, "long tensor"),
        ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
        ({"min_new_tokens": 9}, r"min_new_tokens must be in 0..max_new_tokens \(3\)"),
    ],
)
def test_bad_arguments(kwargs, match):
    step, _ = markov(TRAP)
    args = {"prompt": torch.tensor([[0]]), "max_new_tokens": 3} | kwargs
    with pytest.raises(ValueError, match=match):
        greedy_decode(step, args.pop("prompt"), **args)


def test_bad_step_output_shape():
    with pytest.raises(ValueError, match=r"expected \(1, V\)"):
        greedy_decode(lambda t, s: torch.zeros(2, 4), torch.tensor([[0]]), max_new_tokens=1)
    with pytest.raises(ValueError, match="unknown decoding method 'topk'"):
        generate(lambda t, s: torch.zeros(1, 4), torch.tensor([[0]]), "topk", max_new_tokens=1)
