"""Builtin caption metrics (BLEU, ROUGE-L, CIDEr-D, tokenization) on hand-worked cases."""

import math

import pytest

from vlp.metrics import caption_metrics, cider_d, corpus_bleu, ptb_tokenize, rouge_l, tokenize_captions
from vlp.metrics.rouge import lcs_length


def test_bleu_by_hand():
    (b1, b2, _, _), _ = corpus_bleu(["the cat sat on the mat"], [["the cat is on the mat"]])
    # unigrams: the x2, cat, on, mat match (clipped), "sat" does not: 5/6
    assert b1 == pytest.approx(5 / 6)
    # bigrams: "the cat", "on the", "the mat" of 5 -> 3/5; BLEU-2 = sqrt(5/6 * 3/5)
    assert b2 == pytest.approx(math.sqrt(0.5))


def test_bleu_clipping_and_brevity_penalty():
    (b1, *_), _ = corpus_bleu(["the the the"], [["the cat"]])
    assert b1 == pytest.approx(1 / 3)  # "the" clipped to its count in the reference
    (b1, *_), _ = corpus_bleu(["the cat"], [["the cat is on the mat"]])
    assert b1 == pytest.approx(math.exp(1 - 6 / 2))  # precision 1, BP = exp(1 - r/c)


def test_bleu_closest_reference_length_prefers_shorter_on_ties():
    # candidate of 4 words; refs of 3 and 5 words are equally close: the shorter (3) is used, no penalty
    (b1, *_), _ = corpus_bleu(["a b c d"], [["a b c", "a b c d e"]])
    assert b1 == pytest.approx(1.0)
    (b1, *_), _ = corpus_bleu(["a b c d"], [["a b c d e", "a b c d e f"]])
    assert b1 == pytest.approx(math.exp(1 - 5 / 4))


def test_bleu_is_corpus_level_not_mean_of_sentences():
    cands, refs = ["a b", "c d e f"], [["a x"], ["c d e f"]]
    (b1, *_), per_item = corpus_bleu(cands, refs)
    assert b1 == pytest.approx((1 + 4) / (2 + 4))  # pooled counts
    assert per_item[0] == pytest.approx([0.5, 1.0])


def test_bleu_no_match_is_tiny_not_error():
    (b1, b2, b3, b4), _ = corpus_bleu(["x y"], [["a b c"]])
    assert 0 <= b4 < 1e-6 and b1 < 1e-6


def test_rouge_l_by_hand():
    assert lcs_length("a b c d".split(), "a c d e f".split()) == 3
    p, r = 3 / 4, 3 / 5
    expected = (1 + 1.2**2) * p * r / (r + 1.2**2 * p)
    score, per_item = rouge_l(["a b c d"], [["a c d e f"]])
    assert score == pytest.approx(expected)
    # best precision and best recall may come from different references
    score, _ = rouge_l(["a b"], [["a b c d e f", "a x"]])
    p, r = 1.0, 1 / 2  # precision: ref 1 gives 2/2; recall: ref 1 gives 2/6, ref 2 gives 1/2
    assert score == pytest.approx((1 + 1.44) * p * r / (r + 1.44 * p))


def test_cider_identical_two_word_captions_is_five():
    # two items, all n-grams unique to their item: idf = log 2 everywhere; 1- and 2-gram
    # cosines are 1, 3- and 4-grams absent (0): mean 0.5, times 10
    score, per_item = cider_d(["a b", "c d"], [["a b"], ["c d"]])
    assert per_item == pytest.approx([5.0, 5.0])
    assert score == pytest.approx(5.0)


def test_cider_clipping_and_length_penalty_by_hand():
    score, per_item = cider_d(["a a b", "c d"], [["a b"], ["c d"]])
    # unigrams: candidate (2l, l), reference (l, l): clipped dot 2l^2, norms l*sqrt5, l*sqrt2
    uni = 2 / math.sqrt(10)
    # bigrams: candidate "a a", "a b" (l each), reference "a b": dot l^2, norms l*sqrt2, l
    bi = 1 / math.sqrt(2)
    penalty = math.exp(-(1.0**2) / (2 * 6.0**2))  # bigram counts 2 vs 1
    assert per_item[0] == pytest.approx((uni + bi) * penalty / 4 * 10)
    assert score == pytest.approx((per_item[0] + 5.0) / 2)


def test_cider_single_item_is_zero_like_reference_code():
    assert cider_d(["a b"], [["a b"]])[0] == 0.0


@pytest.mark.parametrize(
    "caption, tokens",
    [
        ("A man's dog isn't here.", ["a", "man", "'s", "dog", "is", "n't", "here"]),
        ("Two dogs, one black, play!", ["two", "dogs", "one", "black", "play"]),
        ('A sign that says "stop" (in red).', ["a", "sign", "that", "says", "stop", "-lrb-", "in", "red", "-rrb-"]),
        ("It costs $5 at 10:30, 1,000 times.", ["it", "costs", "$", "5", "at", "10:30", "1,000", "times"]),
        ("A black-and-white photo of the U.S. flag", ["a", "black-and-white", "photo", "of", "the", "u.s.", "flag"]),
        ("i cannot", ["i", "can", "not"]),
    ],
)
def test_ptb_tokenize_cases(caption, tokens):
    assert ptb_tokenize(caption) == tokens


def test_single_letter_period_depends_on_next_caption():
    # PTB keeps "a." as an initial unless a sentence-starting word follows, across caption lines
    assert tokenize_captions(["plan a.", "the end"]) == ["plan a.", "the end"]
    assert tokenize_captions(["plan a.", "The end"]) == ["plan a", "the end"]


def test_caption_metrics_builtin_keys_and_perfect_score():
    preds = {1: "A dog runs.", 2: "Two cats sleep on a sofa."}
    refs = {1: ["a dog runs", "a dog is running"], 2: ["two cats sleep on a sofa", "cats on a couch"]}
    out = caption_metrics(preds, refs, backend="builtin")
    assert set(out) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"}
    assert out["Bleu_1"] == pytest.approx(1.0)
    assert out["ROUGE_L"] == pytest.approx(1.0)


def test_caption_metrics_input_errors():
    with pytest.raises(ValueError, match=r"no references for ids \[2\]"):
        caption_metrics({1: "a", 2: "b"}, {1: ["a"]}, backend="builtin")
    with pytest.raises(ValueError, match="non-empty list of strings"):
        caption_metrics({1: "a"}, {1: "a"}, backend="builtin")
    with pytest.raises(ValueError, match="unknown caption-metric backend 'java'"):
        caption_metrics({1: "a"}, {1: ["a"]}, backend="java")
