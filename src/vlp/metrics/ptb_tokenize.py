"""A pure-Python stand-in for the COCO caption eval's tokenization (no Java).

pycocoevalcap runs Stanford CoreNLP's PTBTokenizer (``-preserveLines
-lowerCase``) and then drops the punctuation tokens listed in ``PUNCTUATIONS``.
This module reproduces that pipeline for ordinary English captions:

- lower-case; quotes and the listed punctuation (``. , ; : ? ! - -- ...``) go;
- clitics are split the PTB way: ``isn't -> is n't``, ``can't -> ca n't``,
  ``man's -> man 's``, ``they're -> they 're``, ``cannot -> can not``,
  ``gonna -> gon na``;
- a trailing period is split off (and so dropped) unless the word is an
  abbreviation with inner periods (``u.s.``), a known title (``mr.``, ``dr.``)
  or a single letter not followed by a sentence-starting word such as "The" (``vitamin c.``);
- numbers keep inner periods, commas and colons (``3.5``, ``1,000``, ``10:30``);
  ``$``, ``#`` and ``%`` become their own tokens; hyphenated words stay whole;
- brackets become ``-lrb- -rrb- -lsb- -rsb- -lcb- -rcb-`` and are *kept*: the
  COCO script's list has them upper-case but the tokenizer lower-cases them, so
  in the official pipeline they survive as tokens too.

tests/metrics compare it with the Java tokenizer on a set of tricky captions.
Inputs far from captions (URLs, emoticons, rare abbreviations) may differ.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# pycocoevalcap/tokenizer/ptbtokenizer.py: tokens removed after tokenization
COCO_PUNCTUATIONS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)
_BRACKETS = {"(": " -lrb- ", ")": " -rrb- ", "[": " -lsb- ", "]": " -rsb- ", "{": " -lcb- ", "}": " -rcb- "}
_TITLES = frozenset(
    "mr mrs ms dr st jr sr vs etc inc ltd co corp prof mt ave gen gov sen rep capt col lt sgt rev hon "
    "jan feb mar apr jun jul aug sep sept oct nov dec".split()
)
_SPECIAL = {
    "cannot": ["can", "not"],
    "gonna": ["gon", "na"],
    "wanna": ["wan", "na"],
    "gotta": ["got", "ta"],
    "gimme": ["gim", "me"],
    "lemme": ["lem", "me"],
    "'tis": ["'t", "is"],
    "'twas": ["'t", "was"],
}
_KEEP_APOSTROPHE = frozenset(["'s", "'re", "'ve", "'ll", "'d", "'m", *(w for w in _SPECIAL if w.startswith("'"))])
_COMMA = re.compile(r"(?<!\d),|,(?!\d)")  # commas split off words, but not inside numbers (1,000)
_NEG = re.compile(r"^(.+?)(n't)$")
_CLITIC = re.compile(r"^(.+?)('s|'re|'ve|'ll|'d|'m)$")
_FRONT_SINGLE = re.compile(r"^(\$|#|`+)")
_BACK_RUN = re.compile(r"(\.{2,}|[!?]+|-{2,})$")
# Capitalised words after which PTBTokenizer 3.4.1 treats "x." as a sentence end (found by
# probing the jar with several hundred common words, in Title and UPPER case).
_SENTENCE_STARTERS = frozenset(
    "A About After An As At But He Her Here However If In It Last Many More Now Once One Other Our She Since So "
    "Some Such That The Their Then There These They This We What When While Yet You".split()
)
_UPPER_STARTERS = frozenset(w.upper() for w in _SENTENCE_STARTERS)
_TITLE_STARTERS = frozenset(["Mr.", "MR.", "Ms.", "MS."])  # but not "Mrs." or "Dr.", oddly
_LEADING_LETTERS = re.compile(r"^[A-Za-z]+(?![A-Za-z'])")
_INITIALS = re.compile(r"^(?:[A-Za-z]\.)+[A-Za-z]$")  # u.s / e.g / p.m (the final period is stripped)


def _keeps_period(body: str, next_word: str | None) -> bool:
    """Whether ``body + "."`` stays one token (an abbreviation) rather than ending a sentence."""
    low = body.lower()
    if low in _TITLES or _INITIALS.match(body):
        return True
    if low == "no" and next_word is not None and next_word[:1].isdigit():  # "no. 5"
        return True
    # a single letter with a period is an initial ("vitamin c.") unless a sentence-starting word follows
    return len(body) == 1 and body.isalpha() and not (next_word and _starts_sentence(next_word))


def _starts_sentence(word: str) -> bool:
    if word[:3] in _TITLE_STARTERS:
        return True
    head = _LEADING_LETTERS.match(word)
    return head is not None and (head.group(0) in _SENTENCE_STARTERS or head.group(0) in _UPPER_STARTERS)


def _periods(run: str) -> str:
    # PTB writes any run of periods as "." (one) or "..." (several); anything else passes through
    if set(run) != {"."}:
        return run
    return "." if len(run) == 1 else "..."


def _split_word(tok: str, next_word: str | None) -> list[str]:
    front: list[str] = []
    back: list[str] = []
    while tok:
        m = _FRONT_SINGLE.match(tok)
        if m and len(tok) > len(m.group(1)):
            front.append(m.group(1))
            tok = tok[len(m.group(1)) :]
            continue
        # a leading apostrophe is an opening quote unless it starts '90s or 'tis / 'twas
        if tok.startswith("'") and len(tok) > 1 and not tok[1].isdigit() and tok.lower() not in _KEEP_APOSTROPHE:
            front.append("`")
            tok = tok[1:]
            continue
        break
    while tok:
        m = _BACK_RUN.search(tok)
        if m and m.start() > 0 and m.group(1)[0] == "." and _keeps_period(tok[: m.start()], None):
            # "etc..." / "a..": PTB gives the abbreviation its period and splits the rest off
            back.insert(0, _periods(m.group(1)[1:]))
            tok = tok[: m.start() + 1]
            break
        if m and m.start() > 0:
            back.insert(0, _periods(m.group(1)))
            tok = tok[: m.start()]
            continue
        last = tok[-1]
        if len(tok) > 1 and last in ",;:%'":
            back.insert(0, last)
            tok = tok[:-1]
            continue
        if len(tok) > 1 and last == "." and not _keeps_period(tok[:-1], next_word):
            back.insert(0, ".")
            tok = tok[:-1]
            continue
        break
    middle: list[str] = []
    low = tok.lower()
    if low in _SPECIAL:
        middle = list(_SPECIAL[low])
    elif (m := _NEG.match(low)) or (m := _CLITIC.match(low)):
        middle = [m.group(1), m.group(2)]
    elif tok:
        middle = [_periods(low)]
    return front + middle + back


def _words(caption: str) -> list[str]:
    # quotes become `` tokens (dropped later) so that the look-ahead above sees them, as PTB does
    text = _COMMA.sub(" , ", caption.replace("\n", " ").replace('"', " `` "))
    for bracket, name in _BRACKETS.items():
        text = text.replace(bracket, name)
    return text.split()


def _tokenize(words: list[str], after: str | None) -> list[str]:
    tokens: list[str] = []
    for i, word in enumerate(words):
        nxt = words[i + 1] if i + 1 < len(words) else after
        tokens.extend(t.lower() for t in _split_word(word, nxt))
    return [t for t in tokens if t not in COCO_PUNCTUATIONS]


def ptb_tokenize(caption: str, next_caption: str | None = None) -> list[str]:
    """Tokens of one caption as the COCO eval sees them (lower-cased, punctuation removed).

    Case is kept until the end because PTB decides whether "x." ends a sentence
    from the next word's case. The Java tokenizer reads all captions as lines of
    one file and looks across line ends, so a caption ending in a single letter
    and a period ("... plan a.") keeps "a." only when the *next caption* does not
    start with a capital; pass that caption as ``next_caption`` to reproduce it
    (:func:`tokenize_captions` does so for a list).
    """
    after = _words(next_caption)[:1] if next_caption is not None else []
    return _tokenize(_words(caption), after[0] if after else None)


def tokenize_captions(captions: Sequence[str]) -> list[str]:
    """Tokenize captions given in the order pycocoevalcap writes them to its tokenizer's input
    file, each re-joined with single spaces (the string form the COCO scorers take)."""
    words = [_words(c) for c in captions]
    out = []
    for i, w in enumerate(words):
        # the next *non-empty* line's first word, as the Java tokenizer would see it
        after = next((nw[0] for nw in words[i + 1 :] if nw), None)
        out.append(" ".join(_tokenize(w, after)))
    return out


__all__ = ["COCO_PUNCTUATIONS", "ptb_tokenize", "tokenize_captions"]
