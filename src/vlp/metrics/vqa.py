"""VQA accuracy exactly as the official VQA evaluation script computes it.

The reference is ``vqaEval.py`` of the VQA API (GT-Vision-Lab/VQA, Python 3
version; LAVIS and BLIP ship the same file). Its behaviour, reproduced here
quirks included:

- the *prediction* is whitespace-stripped, then punctuation-processed, then
  lower-cased with number words mapped to digits ("none"/"zero" -> "0" ...
  "ten" -> "10"), articles (a, an, the) dropped and apostrophe-less
  contractions restored ("dont" -> "don't");
- the *human answers* only get the punctuation step, and only when they are not
  all identical (the dataset's answers are already normalized);
- punctuation step: if the text contains a comma between two digits ("1,000"),
  or the punctuation mark touches a space, the mark is deleted, otherwise it is
  replaced by a space; then every period not followed by a digit is deleted
  (the official regex's look-behind is mistyped, so "3.5" keeps its period but
  "a.b" loses it), at most 32 of them (the script passes ``re.UNICODE`` where
  ``re.sub`` expects ``count``);
- accuracy of one question: for each of the 10 leave-one-out subsets of the
  human answers, ``min(#matches among the other 9 / 3, 1)``, averaged.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip
# The capitalised keys ("Im", "Ive", ...) can never match after lower-casing; they are kept
# because the official table has them, and the table is meant to be the official one.

NUMBER_WORDS: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES = frozenset({"a", "an", "the"})
PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
# Same pattern as the official script: "(?!<=\d)" is a negative *look-ahead* for the literal
# text "<=" + digit (a mistyped look-behind), so in practice only "not followed by a digit" counts.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(\,)(\d)")
_OFFICIAL_PERIOD_COUNT = 32  # the official call passes re.UNICODE (== 32) as re.sub's `count`


def process_punctuation(text: str) -> str:
    """The official ``processPunctuation`` step (no lower-casing, no stripping)."""
    out = text
    digit_comma = _COMMA_BETWEEN_DIGITS.search(text) is not None
    for p in PUNCTUATION:
        # tests look at the *input* text, like the official code, not at the text edited so far
        if (p + " " in text or " " + p in text) or digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, count=_OFFICIAL_PERIOD_COUNT)


def process_digit_article(text: str) -> str:
    """The official ``processDigitArticle`` step: lower-case, number words -> digits, drop articles,
    restore contractions; words are re-joined with single spaces."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(text: str) -> str:
    """Normalize a predicted answer the way the official script does before matching."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def vqa_accuracy(pred: str, answers: Sequence[str]) -> float:
    """Official accuracy in [0, 1] of one predicted answer against the human answers (10 in VQA).

    With ``m`` of 10 humans matching: 0 -> 0, 1 -> 0.3, 2 -> 0.6, 3 -> 0.9, >= 4 -> 1.0.
    """
    if isinstance(answers, str):
        raise TypeError("answers must be a list of human answer strings, got a single string")
    if len(answers) == 0:
        raise ValueError("vqa_accuracy needs at least one human answer")
    pred_n = normalize_answer(pred)
    gts = list(answers)
    if len(set(gts)) > 1:
        gts = [process_punctuation(a) for a in gts]
    matches = [a == pred_n for a in gts]
    total = sum(matches)
    # leave-one-out: answer i removed, count matches among the rest
    accs = [min(1.0, (total - int(m)) / 3.0) for m in matches]
    return sum(accs) / len(accs)


def soft_score(count: int, num_answers: int = 10) -> float:
    """Soft target for an answer given by ``count`` of ``num_answers`` humans.

    It is the expected official accuracy of predicting that answer (the
    leave-one-out average), which for 10 answers is the familiar table of
    bottom-up-attention / ViLT training targets: 0, 0.3, 0.6, 0.9, 1.0 for 0, 1,
    2, 3, >= 4 occurrences.
    """
    if num_answers < 1:
        raise ValueError(f"num_answers must be >= 1, got {num_answers}")
    if not 0 <= count <= num_answers:
        raise ValueError(f"count must be in 0..{num_answers}, got {count}")
    hit = count * min(1.0, (count - 1) / 3.0) if count else 0.0  # left-out answer is a match
    miss = (num_answers - count) * min(1.0, count / 3.0)  # left-out answer is not a match
    return round((hit + miss) / num_answers, 12)


def vqa_score(
    preds: Sequence[str],
    answer_lists: Sequence[Sequence[str]],
    question_types: Sequence[str] | None = None,
    answer_types: Sequence[str] | None = None,
) -> dict:
    """Mean official accuracy in percent, overall and per question / answer type.

    Args:
        preds: one predicted answer per question.
        answer_lists: the human answers of each question (10 in VQAv2).
        question_types: optional type per question (VQAv2's ``question_type``,
            e.g. "what color is the").
        answer_types: optional type per question ("yes/no", "number", "other").

    Returns:
        ``{"overall": float, "per_question_type": {...}, "per_answer_type": {...},
        "accuracies": [per-question accuracy in 0..1]}``; the type tables are
        present only when the types are given. Unlike the official script,
        numbers are not rounded to two decimals.
    """
    n = len(preds)
    if len(answer_lists) != n:
        raise ValueError(f"got {n} predictions but {len(answer_lists)} answer lists")
    if n == 0:
        raise ValueError("vqa_score needs at least one question")
    accs = [vqa_accuracy(p, a) for p, a in zip(preds, answer_lists)]
    out: dict = {"overall": 100.0 * sum(accs) / n, "accuracies": accs}
    for key, types in (("per_question_type", question_types), ("per_answer_type", answer_types)):
        if types is None:
            continue
        if len(types) != n:
            raise ValueError(f"{key}: got {len(types)} types for {n} questions")
        groups: dict[str, list[float]] = {}
        for t, acc in zip(types, accs):
            groups.setdefault(t, []).append(acc)
        out[key] = {t: 100.0 * sum(v) / len(v) for t, v in groups.items()}
    return out


def answer_prior(answers: Sequence[Sequence[str]], answer_types: Sequence[str]) -> list[str]:
    """Question-blind predictions, VQA's chance level: for every question the most frequent human
    answer of its answer type over all the questions given (ties broken alphabetically)."""
    if len(answers) != len(answer_types):
        raise ValueError(f"got {len(answers)} answer lists but {len(answer_types)} answer types")
    counts: dict[str, Counter] = {}
    for given, kind in zip(answers, answer_types):
        counts.setdefault(kind, Counter()).update(given)
    best = {kind: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for kind, c in counts.items()}
    return [best[kind] for kind in answer_types]


__all__ = [
    "CONTRACTIONS",
    "NUMBER_WORDS",
    "answer_prior",
    "normalize_answer",
    "process_digit_article",
    "process_punctuation",
    "soft_score",
    "vqa_accuracy",
    "vqa_score",
]
