"""Every ShapesWorld caption, VQA answer and referring expression is true of its image.

The checker here is written independently of the generator: it reads the ground
truth from the COCO instances file (whose boxes and colours test_shapes_formats
checks against the pixels), parses each sentence with its own small grammar and
evaluates it. A relation is "box strictly on that side", a position is "box
wholly in that half", a noun phrase with a count means exactly that many objects.
"""

from __future__ import annotations

import json
import pickle
import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlp.data.shapesworld import generate

SPLITS = ("train", "val", "test", "holdout")
SIZE = 48


@dataclass(frozen=True)
class Obj:
    ann_id: int
    shape: str
    color: str
    size: str
    x0: float
    y0: float
    x1: float
    y1: float


class World:
    """Ground truth of a folder and a parser for its words."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.meta = json.loads((root / "meta.json").read_text())
        syn = self.meta["synonyms"]
        self.words: dict[str, tuple[str, str]] = {}  # word -> (attribute, canonical value)
        for kind, key in (("shapes", "shape"), ("colors", "color"), ("sizes", "size")):
            for canon, words in syn[kind].items():
                for w in words:
                    self.words[w] = (key, canon)
                    if key == "shape":
                        self.words[syn["plurals"][w]] = (key, canon)
        for w in syn["objects"]:
            self.words[w] = ("any", "")
            self.words[syn["plurals"][w]] = ("any", "")
        self.numbers = {w: k for k, w in enumerate(syn["numbers"])} | {"a": 1, "an": 1, "the": 1}
        coco = json.loads((root / "annotations" / "instances.json").read_text())
        names = {c["id"]: c["name"] for c in coco["categories"]}
        self.objects: dict[int, list[Obj]] = {im["id"]: [] for im in coco["images"]}
        self.files = {im["id"]: im["file_name"] for im in coco["images"]}
        for a in coco["annotations"]:
            x, y, w, h = a["bbox"]
            attrs = a["attributes"]
            obj = Obj(a["id"], names[a["category_id"]], attrs["color"], attrs["size"], x, y, x + w, y + h)
            self.objects[a["image_id"]].append(obj)

    def tone(self, image_id: int) -> str:
        pixels = np.asarray(Image.open(self.root / "images" / self.files[image_id]).convert("L"))
        return "light" if np.median(pixels) > 128 else "dark"

    def attrs(self, phrase: str) -> dict[str, str]:
        """``[size] [colour] noun`` -> attributes; fails on any other word."""
        out: dict[str, str] = {}
        for w in phrase.split():
            key, value = self.words[w]
            if key != "any":
                assert key not in out, phrase
                out[key] = value
        assert phrase.split()[-1] in self.words and self.words[phrase.split()[-1]][0] in ("shape", "any"), phrase
        return out


def match(objs: list[Obj], attrs: dict[str, str]) -> list[Obj]:
    return [o for o in objs if all(getattr(o, k) == v for k, v in attrs.items())]


def related(a: Obj, b: Obj, rel: str, slack: float = 0.0) -> bool:
    """``a`` is ``rel`` ``b``: boxes strictly apart; ``slack`` > 0 also counts near misses (could be seen so)."""
    return {
        "left of": a.x1 < b.x0 + slack,
        "right of": a.x0 > b.x1 - slack,
        "above": a.y1 < b.y0 + slack,
        "below": a.y0 > b.y1 - slack,
    }[rel]


def at(o: Obj, where: str, size: int, slack: float = 0.0) -> bool:
    return {
        "on the left": o.x1 < size / 2 + slack,
        "on the right": o.x0 > size / 2 - slack,
        "at the top": o.y1 < size / 2 + slack,
        "at the bottom": o.y0 > size / 2 - slack,
    }[where]


# "the one object left of X" must be unambiguous to the eye: no other object within half a pixel of it
SLACK = 0.5


REL = r"(?:to the )?(left of|right of)|(above|below)"
WHERE = r"(on the left|on the right|at the top|at the bottom)"


def rel_name(m: re.Match, first: int) -> str:
    return m.group(first) or m.group(first + 1)


def the(world: World, objs: list[Obj], phrase: str) -> Obj:
    found = match(objs, world.attrs(phrase))
    assert len(found) == 1, f"'the {phrase}' matches {len(found)} objects"
    return found[0]


# ------------------------------------------------------------------------------ captions


def check_caption(world: World, objs: list[Obj], image_id: int, caption: str) -> None:
    assert caption[0].isupper() and caption.endswith(".")
    text = caption[:-1].lower()
    tone = re.search(r" on a (light|dark) background$", text)
    if tone:
        assert world.tone(image_id) == tone.group(1), caption
        text = text[: tone.start()]
    text = re.sub(r"^(there is|there are|a picture of|an image of|an image with) ", "", text)
    # noun phrases: determiner or number, attribute words, noun
    det = "|".join(sorted(world.numbers, key=len, reverse=True))
    np_re = rf"({det}) ((?:\w+ )*?\w+)"
    pieces = re.fullmatch(rf"{np_re}(?: is)? (?:{REL}) {np_re}", text)
    if pieces:  # "a red circle left of a blue square" / "the red circle is above the blue square"
        a = match(objs, world.attrs(pieces.group(2)))
        b = match(objs, world.attrs(pieces.group(6)))
        assert len(a) == len(b) == 1, caption
        assert related(a[0], b[0], rel_name(pieces, 3)), caption
        return
    pieces = re.fullmatch(rf"{np_re}(?: is)? {WHERE}", text)
    if pieces:  # "a red circle on the left"
        a = match(objs, world.attrs(pieces.group(2)))
        assert len(a) == 1 and at(a[0], pieces.group(3), SIZE), caption
        return
    # an inventory or a count: "two red circles, a square and a blue star" / "three shapes"
    for item in re.split(r", | and ", text):
        m = re.fullmatch(np_re, item)
        assert m, f"cannot parse {item!r} in {caption!r}"
        assert len(match(objs, world.attrs(m.group(2)))) == world.numbers[m.group(1)], caption


def flipped(objs: list[Obj], size: int) -> list[Obj]:
    return [replace(o, x0=size - o.x1, x1=size - o.x0) for o in objs]


def swap_left_right(text: str) -> str:
    return re.sub(r"\b(left|right)\b", lambda m: "right" if m.group(1) == "left" else "left", text)


# ----------------------------------------------------------------------------- questions


def answer(world: World, objs: list[Obj], question: str) -> str:
    q = question.lower()
    assert q.endswith("?") and question[0].isupper()
    q = q[:-1]

    def count(phrase: str) -> int:
        return len(match(objs, world.attrs(phrase)))

    def yes(flag: bool) -> str:
        return "yes" if flag else "no"

    if m := re.fullmatch(r"is there an? (.+)", q):
        return yes(count(m.group(1)) > 0)
    if m := re.fullmatch(r"are there any (.+)", q):
        return yes(count(m.group(1)) > 0)
    if m := re.fullmatch(r"(?:how many|what number of) (.+?) (?:are there|are in the image)", q):
        return str(count(m.group(1)))
    if m := re.fullmatch(rf"what shape is (?:{REL}) the (.+)", q):
        return relative(world, objs, rel_name(m, 1), m.group(3)).shape
    if m := re.fullmatch(rf"what color is the (object|shape) (?:{REL}) the (.+)", q):
        return relative(world, objs, rel_name(m, 2), m.group(4)).color
    if m := re.fullmatch(r"what (color|shape|size) is the (.+)|what is the (color) of the (.+)", q):
        key, phrase = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
        attrs = world.attrs(phrase)
        assert key not in attrs, question  # never answered by the question itself
        return getattr(the(world, objs, phrase), key)
    order = world.meta["sizes"]
    if m := re.fullmatch(r"is the (.+) (bigger|larger|smaller) than the (.+)", q):
        a, b = order.index(the(world, objs, m.group(1)).size), order.index(the(world, objs, m.group(3)).size)
        return yes(a < b if m.group(2) == "smaller" else a > b)
    if m := re.fullmatch(r"is the (.+) the same (color|shape|size) as the (.+)", q):
        a, b = the(world, objs, m.group(1)), the(world, objs, m.group(3))
        return yes(getattr(a, m.group(2)) == getattr(b, m.group(2)))
    if m := re.fullmatch(r"are there (more|fewer) (.+) than (.+)", q):
        a, b = count(m.group(2)), count(m.group(3))
        return yes(a > b if m.group(1) == "more" else a < b)
    raise AssertionError(f"unparsed question {question!r}")


def relative(world: World, objs: list[Obj], rel: str, phrase: str) -> Obj:
    landmark = the(world, objs, phrase)
    hits = [o for o in objs if o is not landmark and related(o, landmark, rel, SLACK)]
    assert len(hits) == 1 and related(hits[0], landmark, rel), f"{rel} the {phrase}: {len(hits)} objects"
    return hits[0]


# ------------------------------------------------------------------ referring expressions


def resolve(world: World, objs: list[Obj], expression: str) -> Obj:
    m = re.fullmatch(rf"the (.+?)(?: (?:{REL}) the (.+)| {WHERE})?", expression)
    assert m, expression
    candidates = match(objs, world.attrs(m.group(1)))
    if m.group(4):
        landmark, rel = the(world, objs, m.group(4)), rel_name(m, 2)
        candidates = [o for o in candidates if related(o, landmark, rel, SLACK)]
        assert len(candidates) == 1 and related(candidates[0], landmark, rel), expression
    elif m.group(5):
        candidates = [o for o in candidates if at(o, m.group(5), SIZE, SLACK)]
        assert len(candidates) == 1 and at(candidates[0], m.group(5), SIZE), expression
    assert len(candidates) == 1, f"{expression!r} matches {len(candidates)} objects"
    return candidates[0]


# ----------------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("shapes_language") / "ds"
    generate(root, images=160, size=SIZE, seed=11, workers=1, formats=("karpathy", "coco", "vqa", "refcoco"))
    return World(root)


def test_every_caption_is_true(world: World) -> None:
    data = json.loads((world.root / "annotations" / "dataset_shapes.json").read_text())
    kinds = Counter()
    for img in data["images"]:
        objs = world.objects[img["cocoid"]]
        for s in img["sentences"]:
            check_caption(world, objs, img["cocoid"], s["raw"])
            kinds["relation" if re.search(r"\b(left of|right of|above|below)\b", s["raw"]) else "other"] += 1
            kinds["count-all" if re.search(r"\b(objects?|shapes?)\.$", s["raw"]) else "other"] += 1
    assert kinds["relation"] > 50 and kinds["count-all"] > 50  # every kind of caption occurs


def test_captions_stay_true_under_horizontal_flip_with_left_right_swapped(world: World) -> None:
    data = json.loads((world.root / "annotations" / "dataset_shapes.json").read_text())
    swapped = 0
    for img in data["images"]:
        objs = flipped(world.objects[img["cocoid"]], SIZE)
        for s in img["sentences"]:
            check_caption(world, objs, img["cocoid"], swap_left_right(s["raw"]))
            swapped += swap_left_right(s["raw"]) != s["raw"]
    assert swapped > 30


def test_every_vqa_answer_is_true_and_balanced(world: World) -> None:
    families, yes_no = Counter(), Counter()
    for split in SPLITS:
        qs = json.loads((world.root / "annotations" / f"v2_OpenEnded_shapes_{split}_questions.json").read_text())
        anns = json.loads((world.root / "annotations" / f"v2_shapes_{split}_annotations.json").read_text())
        for q, a in zip(qs["questions"], anns["annotations"]):
            assert answer(world, world.objects[q["image_id"]], q["question"]) == a["multiple_choice_answer"], q
            assert q["question"].lower().startswith(a["question_type"])
            expected_type = {"yes": "yes/no", "no": "yes/no"}.get(a["multiple_choice_answer"], "other")
            if a["multiple_choice_answer"].isdigit():
                expected_type = "number"
            assert a["answer_type"] == expected_type
            families[a["question_family"]] += 1
            if a["answer_type"] == "yes/no":
                yes_no[a["question_family"], a["multiple_choice_answer"]] += 1
    assert set(families) == {"existence", "count", "attribute", "relation", "comparison"}
    assert min(families.values()) > 60
    for family in ("existence", "comparison"):
        ratio = yes_no[family, "yes"] / (yes_no[family, "yes"] + yes_no[family, "no"])
        assert 0.35 < ratio < 0.65, (family, ratio)


def test_every_referring_expression_picks_its_target(world: World) -> None:
    refs = pickle.loads((world.root / "annotations" / "refs(unc).p").read_bytes())
    relational = 0
    for ref in refs:
        objs = world.objects[ref["image_id"]]
        for s in ref["sentences"]:
            assert resolve(world, objs, s["raw"]).ann_id == ref["ann_id"], s["raw"]
            relational += bool(re.search(r"\b(left of|right of|above|below)\b", s["raw"]))
    assert relational > 20
    # objects without a ref are exactly the indistinguishable twins (same shape, colour and size)
    with_ref = {r["ann_id"] for r in refs}
    for objs in world.objects.values():
        for o in objs:
            if o.ann_id not in with_ref:
                assert any(p is not o and (p.shape, p.color, p.size) == (o.shape, o.color, o.size) for p in objs)


def test_holdout_pairs_never_seen_outside_the_holdout_split(world: World) -> None:
    held = {tuple(p) for p in world.meta["holdout_combinations"]}
    counts = world.meta["counts"]
    first_holdout = counts["train"] + counts["val"] + counts["test"] + 1
    syn = world.meta["synonyms"]
    mentions = [
        rf"\b{c} {s}\b"
        for shape, color in held
        for c in syn["colors"][color]
        for w in syn["shapes"][shape]
        for s in (w, syn["plurals"][w])
    ]
    data = json.loads((world.root / "annotations" / "dataset_shapes.json").read_text())
    texts = {img["cocoid"]: [s["raw"].lower() for s in img["sentences"]] for img in data["images"]}
    for split in SPLITS:
        qs = json.loads((world.root / "annotations" / f"v2_OpenEnded_shapes_{split}_questions.json").read_text())
        for q in qs["questions"]:
            texts[q["image_id"]].append(q["question"].lower())
    for image_id, objs in world.objects.items():
        pairs = {(o.shape, o.color) for o in objs}
        if image_id >= first_holdout:
            assert pairs & held, image_id
        else:
            assert not pairs & held, image_id
            assert not any(re.search(p, t) for p in mentions for t in texts[image_id]), texts[image_id]
