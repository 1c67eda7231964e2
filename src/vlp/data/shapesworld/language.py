"""Words for scenes: noun phrases, captions and referring expressions, all true by construction.

Semantics every sentence follows (the tests check them with their own parser):

- a noun phrase ``[det|number] [size] [colour] noun`` states that *exactly* that
  many objects of the scene have the named attributes (``a``/``an``/``the`` = 1);
  the nouns ``object``/``shape`` match any shape;
- ``X left of / right of / above / below Y``: X's box is strictly on that side of Y's;
- ``X on the left / on the right / at the top / at the bottom``: X lies wholly in that
  half of the image;
- a referring expression ``the D [relation the L | position]`` picks the objects
  matching D, keeps those in the relation to the unique L (or at the position), and
  exactly one remains: the target.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from vlp.data.shapesworld.scene import REL_GAP, Scene, position_holds, relation_holds
from vlp.data.shapesworld.vocab import (
    COLOR_WORDS,
    NUMBER_WORDS,
    OBJECT_WORDS,
    POSITION_WORDS,
    POSITIONS,
    RELATION_WORDS,
    RELATIONS,
    SHAPE_WORDS,
    SIZE_WORDS,
    plural,
)

Attrs = dict[str, str]
# Attribute subsets that may describe an object, shortest first.
DESCRIPTIONS: tuple[tuple[str, ...], ...] = (
    ("shape",),
    ("color",),
    ("color", "shape"),
    ("size", "shape"),
    ("size", "color"),
    ("size", "color", "shape"),
)


def pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    """A uniformly chosen element of a non-empty sequence."""
    # rng.random() is several times cheaper than rng.integers() for one scalar
    return options[int(rng.random() * len(options))]


def tokenize(text: str) -> list[str]:
    """Lowercase words without punctuation (the Karpathy / RefCOCO token convention)."""
    return re.findall(r"[a-z0-9]+", text.lower())


def sentence(text: str) -> str:
    """Capitalised, full-stopped caption text."""
    return text[0].upper() + text[1:] + "."


class Facts:
    """A scene's relations, positions and attribute matches, computed once."""

    def __init__(self, scene: Scene) -> None:
        self.scene = scene
        self.objects = scene.objects
        n = len(self.objects)
        self.rel = {
            r: [[i != j and relation_holds(self.objects[i], self.objects[j], r) for j in range(n)] for i in range(n)]
            for r in RELATIONS
        }
        self.pos = {p: [position_holds(o, p) for o in self.objects] for p in POSITIONS}
        # "might be seen so": used to make sure no other object competes for "the one left of X"
        self.maybe_rel = {
            r: [
                [i != j and relation_holds(self.objects[i], self.objects[j], r, -REL_GAP) for j in range(n)]
                for i in range(n)
            ]
            for r in RELATIONS
        }
        self.maybe_pos = {p: [position_holds(o, p, -REL_GAP) for o in self.objects] for p in POSITIONS}
        self._unique: dict[tuple[int, str | None], list[Attrs]] = {}
        self._matches: dict[tuple[tuple[str, str], ...], list[int]] = {}

    def attrs(self, i: int, keys: Sequence[str]) -> Attrs:
        """Object ``i``'s values for ``keys``."""
        return {k: getattr(self.objects[i], k) for k in keys}

    def matching(self, attrs: Attrs) -> list[int]:
        """Indices of the objects with every attribute in ``attrs`` (memoised)."""
        key = tuple(sorted(attrs.items()))
        found = self._matches.get(key)
        if found is None:
            found = self._matches[key] = self.scene.matching(attrs)
        return found

    def unique_descriptions(self, i: int, without: str | None = None) -> list[Attrs]:
        """Attribute sets that single out object ``i`` (optionally never naming ``without``)."""
        if (i, without) in self._unique:
            return self._unique[i, without]
        found = []
        for keys in DESCRIPTIONS:
            if without in keys:
                continue
            attrs = self.attrs(i, keys)
            if self.matching(attrs) == [i]:
                found.append(attrs)
        self._unique[i, without] = found
        return found


def noun_phrase(rng: np.random.Generator, attrs: Attrs, plural_form: bool = False, any_noun: str = "") -> str:
    """``[size] [colour] noun`` for ``attrs`` with synonyms drawn by ``rng``.

    Without a shape the noun is ``object``/``shape``, or ``any_noun`` when given.
    """
    words = []
    if "size" in attrs:
        words.append(pick(rng, SIZE_WORDS[attrs["size"]]))
    if "color" in attrs:
        words.append(pick(rng, COLOR_WORDS[attrs["color"]]))
    if "shape" in attrs:
        noun = pick(rng, SHAPE_WORDS[attrs["shape"]])
    else:
        noun = any_noun or pick(rng, OBJECT_WORDS)
    words.append(plural(noun) if plural_form else noun)
    return " ".join(words)


def indefinite(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def counted(rng: np.random.Generator, count: int, attrs: Attrs) -> str:
    """``a red circle`` / ``two red circles``."""
    if count == 1:
        return indefinite(noun_phrase(rng, attrs))
    return f"{NUMBER_WORDS[count]} {noun_phrase(rng, attrs, plural_form=True)}"


def join_list(items: Sequence[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


# ---------------------------------------------------------------------------- captions

_GROUPINGS = (("color", "shape"), ("shape",), ("color",), ("size", "color", "shape"))


def _inventory(facts: Facts, rng: np.random.Generator) -> str | None:
    keys = pick(rng, _GROUPINGS)
    groups: dict[tuple[str, ...], int] = {}
    for i in rng.permutation(len(facts.objects)):
        key = tuple(facts.attrs(int(i), keys).values())
        groups[key] = groups.get(key, 0) + 1
    items = [counted(rng, n, dict(zip(keys, key))) for key, n in groups.items()]
    text = join_list(items)
    verb = "is" if next(iter(groups.values())) == 1 else "are"
    frame = int(rng.random() * 5)
    if frame == 0:
        return text
    if frame == 1:
        return f"there {verb} {text}"
    if frame == 2:
        return f"a picture of {text}"
    if frame == 3:
        return f"an image of {text}"
    return f"{text} on a {facts.scene.background.tone} background"


def _count(facts: Facts, rng: np.random.Generator) -> str | None:
    n = len(facts.objects)
    noun = pick(rng, OBJECT_WORDS)
    phrase = f"{NUMBER_WORDS[n]} {plural(noun) if n > 1 else noun}"
    frame = int(rng.random() * 4)
    if frame == 0:
        return f"there {'is' if n == 1 else 'are'} {phrase}"
    if frame == 1:
        return f"{phrase} on a {facts.scene.background.tone} background"
    if frame == 2:
        return f"an image with {phrase}"
    return phrase


def _statement(rng: np.random.Generator, subject: str, predicate: str, definite_predicate: str | None = None) -> str:
    """``a red circle PRED`` / ``the red circle is PRED`` / ``there is a red circle PRED``, one at random.

    ``definite_predicate`` replaces ``predicate`` in the ``the ... is`` frame (``left of the square``
    there, ``left of a square`` in the other two)."""
    frame = int(rng.random() * 3)
    if frame == 0:
        return f"{indefinite(subject)} {predicate}"
    if frame == 1:
        return f"the {subject} is {predicate if definite_predicate is None else definite_predicate}"
    return f"there is {indefinite(subject)} {predicate}"


def _relation(facts: Facts, rng: np.random.Generator) -> str | None:
    n = len(facts.objects)
    triples = [(i, j, r) for r in RELATIONS for i in range(n) for j in range(n) if facts.rel[r][i][j]]
    rng.shuffle(triples)
    for i, j, r in triples:
        di, dj = facts.unique_descriptions(i), facts.unique_descriptions(j)
        if di and dj:
            a, b = noun_phrase(rng, pick(rng, di)), noun_phrase(rng, pick(rng, dj))
            rel = pick(rng, RELATION_WORDS[r])
            return _statement(rng, a, f"{rel} {indefinite(b)}", f"{rel} the {b}")
    return None


def _position(facts: Facts, rng: np.random.Generator) -> str | None:
    pairs = [(i, p) for p in POSITIONS for i in range(len(facts.objects)) if facts.pos[p][i]]
    rng.shuffle(pairs)
    for i, p in pairs:
        descs = facts.unique_descriptions(i)
        if descs:
            a = noun_phrase(rng, pick(rng, descs))
            where = pick(rng, POSITION_WORDS[p])
            return _statement(rng, a, where)
    return None


_CAPTION_KINDS = (_inventory, _count, _relation, _position)


def make_captions(scene: Scene, rng: np.random.Generator, n: int = 5, facts: Facts | None = None) -> list[str]:
    """``n`` distinct true captions of ``scene`` (inventories, counts, relations, positions)."""
    facts = facts or Facts(scene)
    kinds = [_CAPTION_KINDS[int(k)] for k in rng.permutation(len(_CAPTION_KINDS))]
    captions: list[str] = []
    attempts = 0
    while len(captions) < n:
        kind = kinds[attempts % len(kinds)]
        attempts += 1
        text = kind(facts, rng)
        if text is None:  # e.g. no relation in a one-object scene; inventories and counts always exist
            kinds.remove(kind)
            continue
        text = sentence(text)
        if text not in captions or attempts > 20 * n:  # a one-object scene may run out of wordings
            captions.append(text)
    return captions


# ------------------------------------------------------------------ referring expressions

_REF_HEADS = (("shape",), ("color",), ("color", "shape"), ("size", "shape"))


def referring_expressions(facts: Facts, i: int, rng: np.random.Generator) -> list[str]:
    """Every expression of a few kinds that singles out object ``i`` (plain, relational, positional)."""
    plain = [f"the {noun_phrase(rng, d)}" for d in facts.unique_descriptions(i)]
    relational, positional = [], []
    for keys in _REF_HEADS:
        head = facts.attrs(i, keys)
        candidates = facts.matching(head)
        if len(candidates) == 1:
            continue  # already unique: a plain description says it more simply
        for r in RELATIONS:
            for j in range(len(facts.objects)):
                if not facts.rel[r][i][j]:
                    continue
                landmark = facts.unique_descriptions(j)
                if landmark and [k for k in candidates if facts.maybe_rel[r][k][j]] == [i]:
                    relational.append(
                        f"the {noun_phrase(rng, head)} {pick(rng, RELATION_WORDS[r])} "
                        f"the {noun_phrase(rng, pick(rng, landmark))}"
                    )
        for p in POSITIONS:
            if facts.pos[p][i] and [k for k in candidates if facts.maybe_pos[p][k]] == [i]:
                positional.append(f"the {noun_phrase(rng, head)} {pick(rng, POSITION_WORDS[p])}")
    return plain + relational + positional


def make_refs(
    scene: Scene, rng: np.random.Generator, max_sentences: int = 3, facts: Facts | None = None
) -> list[tuple[int, list[str]]]:
    """(object index, up to ``max_sentences`` distinct expressions) for each object that can be singled out."""
    facts = facts or Facts(scene)
    refs = []
    for i in range(len(scene.objects)):
        options = list(dict.fromkeys(referring_expressions(facts, i, rng)))
        if not options:
            continue  # an exact twin with no distinguishing relation
        order = rng.permutation(len(options))[:max_sentences]
        refs.append((i, [options[int(k)] for k in sorted(order)]))
    return refs
