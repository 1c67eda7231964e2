"""VQA accuracy: the official normalization and leave-one-out averaging, worked by hand."""

import pytest

from vlp.metrics import normalize_answer, soft_score, vqa_accuracy, vqa_score
from vlp.metrics.vqa import CONTRACTIONS, answer_prior, process_punctuation


def answers(matching: int, answer: str = "2", other: str = "3") -> list[str]:
    return [answer] * matching + [other] * (10 - matching)


@pytest.mark.parametrize(
    "matching, expected",
    [
        (0, 0.0),
        (1, 0.3),  # 9 subsets hold the match: 9 * (1/3) / 10
        (2, 0.6),  # (8 * 2/3 + 2 * 1/3) / 10
        (3, 0.9),  # (7 * 1 + 3 * 2/3) / 10: three agreeing humans are NOT quite 1.0
        (4, 1.0),  # every subset of 9 still holds >= 3 matches
        (10, 1.0),
    ],
)
def test_leave_one_out_accuracy(matching, expected):
    assert vqa_accuracy("2", answers(matching)) == pytest.approx(expected)


def test_soft_score_is_expected_official_accuracy():
    assert [soft_score(m) for m in range(5)] == pytest.approx([0.0, 0.3, 0.6, 0.9, 1.0])
    for m in range(11):
        assert soft_score(m) == pytest.approx(vqa_accuracy("2", answers(m)))
    with pytest.raises(ValueError, match="count must be in 0..10"):
        soft_score(11)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Two", "2"),  # number words -> digits (after lower-casing)
        ("none", "0"),
        ("The dog", "dog"),  # articles dropped
        ("an apple a day", "apple day"),
        ("dont know", "don't know"),  # contractions restored
        ("isnt", "isn't"),
        ("  yes.\n", "yes"),  # whitespace stripped, final period removed
        ("3.5", "3.5"),  # period before a digit stays
        ("a.b", "ab"),  # any other period is deleted
        ("1,000", "1000"),  # comma between digits: punctuation deleted, not spaced
        ("red,blue", "red blue"),  # mark not touching a space becomes a space
        ("red, blue", "red blue"),  # mark touching a space is deleted
        ("t-shirt", "t shirt"),
        ("what?!", "what"),  # ? and ! are both not touching a space: replaced by spaces, then split
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_digit_comma_deletes_all_punctuation():
    # with "1,000" present, the hyphen is deleted instead of becoming a space
    assert process_punctuation("1,000 t-shirts") == "1000 tshirts"


def test_identical_human_answers_are_not_normalized():
    # the official quirk: when all ten answers agree they are compared raw
    assert vqa_accuracy("t-shirt", ["t-shirt"] * 10) == 0.0  # prediction becomes "t shirt"
    # once the answers disagree, they get the punctuation step and match
    assert vqa_accuracy("t-shirt", ["t-shirt"] * 9 + ["shirt"]) == pytest.approx(1.0)
    assert vqa_accuracy("Yes", ["yes"] * 10) == 1.0  # the prediction side is always normalized


def test_contraction_table_is_the_official_one():
    assert len(CONTRACTIONS) == 120  # entries in the official vqaEval.py table
    assert CONTRACTIONS["somebody'd"] == "somebodyd"  # an official oddity, kept on purpose
    assert CONTRACTIONS["yall'd've"] == "y'all'd've"


def test_vqa_score_overall_and_per_type():
    preds = ["yes", "two", "red"]
    gts = [["yes"] * 10, answers(2), ["blue"] * 10]
    out = vqa_score(
        preds, gts, question_types=["is the", "how many", "what color"], answer_types=["yes/no", "number", "other"]
    )
    assert out["overall"] == pytest.approx(100 * (1.0 + 0.6 + 0.0) / 3)
    assert out["per_answer_type"] == pytest.approx({"yes/no": 100.0, "number": 60.0, "other": 0.0})
    assert out["per_question_type"]["how many"] == pytest.approx(60.0)
    assert out["accuracies"] == pytest.approx([1.0, 0.6, 0.0])


def test_vqa_score_errors():
    with pytest.raises(ValueError, match="2 predictions but 1 answer lists"):
        vqa_score(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="per_answer_type: got 1 types for 2 questions"):
        vqa_score(["a", "b"], [["a"], ["b"]], answer_types=["x"])
    with pytest.raises(TypeError, match="single string"):
        vqa_accuracy("a", "a")


def test_answer_prior_answers_the_most_frequent_answer_of_each_type():
    # yes/no: "yes" 3 times against "no" 2; other: "red" and "blue" twice each, the alphabetical tie-break picks "blue"
    given = [["yes", "yes", "no"], ["red", "blue"], ["no", "yes"], ["red", "blue"]]
    kinds = ["yes/no", "other", "yes/no", "other"]
    assert answer_prior(given, kinds) == ["yes", "blue", "yes", "blue"]


def test_answer_prior_rejects_lists_of_different_lengths():
    # zip would silently drop the second question's type
    with pytest.raises(ValueError, match="1 answer lists but 2 answer types"):
        answer_prior([["yes"]], ["yes/no", "other"])
