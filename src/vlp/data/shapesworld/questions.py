"""VQA questions with exact answers: existence, count, attribute, relation, comparison.

Answers use canonical names (``red``, ``circle``, ``small``), digits for counts and
``yes``/``no``; ``question_type`` is the question's opening words, as in VQAv2, and
``family`` is one of :data:`FAMILIES`. Yes/no families draw the wanted answer first so
yes and no are balanced. Questions about absent things never name an ``avoid`` pair
(the compositional hold-out), so those pairs stay unseen outside the hold-out split.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, replace

import numpy as np

from vlp.data.shapesworld.language import Attrs, Facts, indefinite, noun_phrase, pick
from vlp.data.shapesworld.scene import Pair, Scene
from vlp.data.shapesworld.vocab import COLORS, RELATION_WORDS, RELATIONS, SHAPES, SIZES

FAMILIES: tuple[str, ...] = ("existence", "count", "attribute", "relation", "comparison")
_VALUES = {"shape": SHAPES, "color": tuple(COLORS), "size": SIZES}


@dataclass(frozen=True)
class QA:
    question: str
    answer: str
    answer_type: str  # "yes/no" | "number" | "other" (VQAv2)
    question_type: str  # the opening words, e.g. "how many"
    family: str


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def _absent(facts: Facts, rng: np.random.Generator, keys: tuple[str, ...], avoid: Collection[Pair]) -> Attrs | None:
    """Random attribute values for ``keys`` that no object has (never an ``avoid`` pair)."""
    for _ in range(20):
        attrs = {k: pick(rng, _VALUES[k]) for k in keys}
        if "shape" in attrs and "color" in attrs and (attrs["shape"], attrs["color"]) in avoid:
            continue
        if not facts.matching(attrs):
            return attrs
    return None


def _present(facts: Facts, rng: np.random.Generator, keys: tuple[str, ...]) -> Attrs:
    return facts.attrs(int(rng.random() * len(facts.objects)), keys)


def _existence(facts: Facts, rng: np.random.Generator, avoid: Collection[Pair]) -> QA | None:
    keys = pick(rng, (("color", "shape"), ("color", "shape"), ("shape",), ("color",), ("size", "shape")))
    attrs = _present(facts, rng, keys) if rng.random() < 0.5 else _absent(facts, rng, keys, avoid)
    if attrs is None:
        return None
    answer = _yes_no(bool(facts.matching(attrs)))
    if rng.random() < 0.5:
        return QA(f"is there {indefinite(noun_phrase(rng, attrs))}?", answer, "yes/no", "is there a", "existence")
    q = f"are there any {noun_phrase(rng, attrs, plural_form=True)}?"
    return QA(q, answer, "yes/no", "are there any", "existence")


def _count(facts: Facts, rng: np.random.Generator, avoid: Collection[Pair]) -> QA | None:
    keys = pick(rng, ((), ("shape",), ("color",), ("color", "shape")))
    attrs = _absent(facts, rng, keys, avoid) if keys and rng.random() < 0.2 else _present(facts, rng, keys)
    if attrs is None:
        return None
    answer = str(len(facts.matching(attrs)))
    phrase = noun_phrase(rng, attrs, plural_form=True)
    frame = int(rng.random() * 3)
    if frame == 0:
        return QA(f"how many {phrase} are there?", answer, "number", "how many", "count")
    if frame == 1:
        return QA(f"how many {phrase} are in the image?", answer, "number", "how many", "count")
    return QA(f"what number of {phrase} are there?", answer, "number", "what number of", "count")


def _attribute(facts: Facts, rng: np.random.Generator, avoid: Collection[Pair]) -> QA | None:
    for i in rng.permutation(len(facts.objects)):
        for k in rng.permutation(3):
            asked = ("color", "shape", "size")[int(k)]
            descs = facts.unique_descriptions(int(i), without=asked)
            if not descs:
                continue
            # "what shape is the red object?", not "... the red shape?"
            phrase = noun_phrase(rng, pick(rng, descs), any_noun="object" if asked == "shape" else "")
            answer = getattr(facts.objects[int(i)], asked)
            if asked == "color" and rng.random() < 0.5:
                return QA(
                    f"what is the color of the {phrase}?", answer, "other", "what is the color of the", "attribute"
                )
            return QA(f"what {asked} is the {phrase}?", answer, "other", f"what {asked} is the", "attribute")
    return None


def _relation(facts: Facts, rng: np.random.Generator, avoid: Collection[Pair]) -> QA | None:
    n = len(facts.objects)
    options = []
    for r in RELATIONS:
        for j in range(n):
            # exactly one object clearly in the relation, and no other even close to it
            hits = [i for i in range(n) if facts.maybe_rel[r][i][j]]
            if len(hits) == 1 and facts.rel[r][hits[0]][j]:
                options.append((hits[0], r, j))
    rng.shuffle(options)
    for i, r, j in options:
        landmark = facts.unique_descriptions(j)
        if not landmark:
            continue
        rel = pick(rng, RELATION_WORDS[r])
        phrase = noun_phrase(rng, pick(rng, landmark))
        if rng.random() < 0.5:
            return QA(
                f"what shape is {rel} the {phrase}?", facts.objects[i].shape, "other", "what shape is", "relation"
            )
        noun = noun_phrase(rng, {})
        answer = facts.objects[i].color
        return QA(f"what color is the {noun} {rel} the {phrase}?", answer, "other", "what color is the", "relation")
    return None


def _compare_sizes(facts: Facts, rng: np.random.Generator, i: int, j: int) -> QA | None:
    di, dj = facts.unique_descriptions(i), facts.unique_descriptions(j)
    if i == j or not di or not dj:
        return None
    a, b = noun_phrase(rng, pick(rng, di)), noun_phrase(rng, pick(rng, dj))
    si, sj = SIZES.index(facts.objects[i].size), SIZES.index(facts.objects[j].size)
    word = pick(rng, ("bigger", "larger", "smaller"))
    answer = _yes_no(si < sj if word == "smaller" else si > sj)
    return QA(f"is the {a} {word} than the {b}?", answer, "yes/no", "is the", "comparison")


def _compare_same(facts: Facts, rng: np.random.Generator, i: int, j: int) -> QA | None:
    attr = pick(rng, ("color", "shape", "size"))
    di, dj = facts.unique_descriptions(i, without=attr), facts.unique_descriptions(j, without=attr)
    if i == j or not di or not dj:
        return None
    a, b = noun_phrase(rng, pick(rng, di)), noun_phrase(rng, pick(rng, dj))
    answer = _yes_no(getattr(facts.objects[i], attr) == getattr(facts.objects[j], attr))
    return QA(f"is the {a} the same {attr} as the {b}?", answer, "yes/no", "is the", "comparison")


def _compare_counts(facts: Facts, rng: np.random.Generator, avoid: Collection[Pair]) -> QA | None:
    key = pick(rng, ("shape", "color"))
    first = _present(facts, rng, (key,))
    second = _present(facts, rng, (key,)) if rng.random() < 0.6 else _absent(facts, rng, (key,), avoid)
    if second is None or second == first:
        return None
    ca, cb = len(facts.matching(first)), len(facts.matching(second))
    word = pick(rng, ("more", "fewer"))
    answer = _yes_no(ca > cb if word == "more" else ca < cb)
    a, b = noun_phrase(rng, first, plural_form=True), noun_phrase(rng, second, plural_form=True)
    return QA(f"are there {word} {a} than {b}?", answer, "yes/no", f"are there {word}", "comparison")


def _comparison(facts: Facts, rng: np.random.Generator, avoid: Collection[Pair]) -> QA | None:
    """A size, same-attribute or count comparison; draws until the wanted yes/no comes up."""
    wanted = _yes_no(rng.random() < 0.5)
    n = len(facts.objects)
    fallback = None
    for _ in range(8):
        kind = int(rng.random() * 3)
        i, j = int(rng.random() * n), int(rng.random() * n)
        if kind == 0:
            qa = _compare_sizes(facts, rng, i, j)
        elif kind == 1:
            qa = _compare_same(facts, rng, i, j)
        else:
            qa = _compare_counts(facts, rng, avoid)
        if qa is not None and qa.answer == wanted:
            return qa
        fallback = fallback or qa
    return fallback


_MAKERS = {
    "existence": _existence,
    "count": _count,
    "attribute": _attribute,
    "relation": _relation,
    "comparison": _comparison,
}


def make_questions(
    scene: Scene,
    rng: np.random.Generator,
    n: int = 5,
    avoid: Collection[Pair] = (),
    facts: Facts | None = None,
) -> list[QA]:
    """Up to ``n`` distinct questions, cycling through the families in a random order.

    A family that has no question for this scene (no relation in a one-object scene)
    is skipped; fewer than ``n`` come back only if the scene runs out of distinct ones.
    """
    facts = facts or Facts(scene)
    families = [FAMILIES[int(k)] for k in rng.permutation(len(FAMILIES))]
    out: list[QA] = []
    seen: set[str] = set()
    attempts = 0
    while len(out) < n and families and attempts < 10 * n:
        family = families[attempts % len(families)]
        attempts += 1
        qa = _MAKERS[family](facts, rng, avoid)
        if qa is None:
            families.remove(family)
            continue
        if qa.question not in seen:
            seen.add(qa.question)
            out.append(replace(qa, question=qa.question[0].upper() + qa.question[1:]))
    return out
