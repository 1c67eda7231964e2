"""Builtin caption metrics against the official pycocoevalcap code (and its Java tokenizer)."""

import contextlib
import importlib.util
import io
import random
import shutil
from pathlib import Path

import pytest

from vlp.metrics import caption_metrics, cider_d, coco_caption, corpus_bleu, resolve_backend, rouge_l, tokenize_captions
from vlp.metrics.ptb_tokenize import COCO_PUNCTUATIONS

HAS_COCO = importlib.util.find_spec("pycocoevalcap") is not None
HAS_JAVA = shutil.which("java") is not None
needs_coco = pytest.mark.skipif(not HAS_COCO, reason="pycocoevalcap is not installed (pip install 'vlp[eval]')")
needs_java = pytest.mark.skipif(not (HAS_COCO and HAS_JAVA), reason="needs pycocoevalcap and a `java` executable")

WORDS = (
    "a an the man woman dog cat two sitting on grass with red blue ball playing in park near tree car street".split()
)
TRICKY = [
    "A man riding a wave on top of a surfboard.",
    "Two dogs, one black and one white, play in the snow!",
    "The man's shirt isn't red; it's \"blue\" (mostly).",
    "A black-and-white photo of a 3.5 inch cat... can't you see?",
    "A person at 10:30 with $5 & a U.S. flag -- wow",
    "we'll they're I'd I'm you've o'clock",
    "A Train [on] {tracks} next to e-mail #1 100% 1,000",
    "Mr. Smith and Dr. Who went to St. Louis.",
    "a cat. a dog.",
    "she said 'hello' to the '90s kid",
    "i cannot go, gonna wanna gotta",
    "a man in a red shirt!!!",
    "the cat's and the dogs'",
    "a bowl of fruit etc.",
    "plan a.",
    "The end",
    "vitamin c.",
    "food a. The end",
    "no. 5 is here",
    "a cat on a mat,a dog",
    "Etc...",
]


def _random_captions(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 12)))
        out.append(text.capitalize() + rng.choice([".", "", " .", "!"]))
    return out


def _caption_sets():
    realistic = (
        ["a man riding a wave on a surfboard", "two dogs play in the snow", "a plate of food on a table"],
        [
            ["a surfer rides a large wave", "a man on a surfboard riding a wave", "person surfing in the ocean"],
            ["two dogs playing in snow", "a black dog and a white dog in the snow", "dogs running through snow"],
            ["a plate with food and a fork", "food on a white plate", "a table with a plate of pasta"],
        ],
    )
    cands = _random_captions(1, 40)
    refs = [_random_captions(100 + i, 5) for i in range(40)]
    edge = (["", "a a a a", "dog"], [["a dog"], ["a", "a a"], ["dog dog dog", "the dog"]])
    return {
        "realistic": realistic,
        "random": (tokenize_captions(cands), [tokenize_captions(r) for r in refs]),
        "edge": edge,
    }


@needs_coco
@pytest.mark.parametrize("name", ["realistic", "random", "edge"])
def test_scorers_match_pycocoevalcap(name):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    cands, refs = _caption_sets()[name]
    res = {i: [c] for i, c in enumerate(cands)}
    gts = {i: r for i, r in enumerate(refs)}
    with contextlib.redirect_stdout(io.StringIO()):
        bleu_ref, bleu_items_ref = Bleu(4).compute_score(gts, res, verbose=0)
    bleu, bleu_items = corpus_bleu(cands, refs)
    assert bleu == pytest.approx(bleu_ref, abs=1e-9)
    for ours, theirs in zip(bleu_items, bleu_items_ref):
        assert ours == pytest.approx(theirs, abs=1e-9)
    assert rouge_l(cands, refs)[0] == pytest.approx(Rouge().compute_score(gts, res)[0], abs=1e-9)
    cider, cider_items = cider_d(cands, refs)
    cider_ref, cider_items_ref = Cider().compute_score(gts, res)
    assert cider == pytest.approx(cider_ref, abs=1e-6)
    assert cider_items == pytest.approx(list(cider_items_ref), abs=1e-6)


@needs_java
def test_tokenizer_matches_java_ptbtokenizer():
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    rng = random.Random(0)
    pieces = WORDS + "man's isn't can't they're A The There b c x 3.5 1,000 10:30 $5 100% e-mail u.s. mr. etc.".split()
    pieces += ['"nice"', "'quoted'", "(big)", "[old]", "dogs'", "--", "-", "...", "!", "?", ",", ";", ":"]
    fuzz = []
    for _ in range(200):
        text = " ".join(rng.choice(pieces) for _ in range(rng.randint(1, 12)))
        text = text[0].upper() + text[1:] if rng.random() < 0.7 else text
        fuzz.append(text + rng.choice([".", "", " .", "!", "?", ".."]))
    captions = TRICKY + fuzz
    official = PTBTokenizer().tokenize({0: [{"caption": c} for c in captions]})[0]
    ours = tokenize_captions(captions)
    mismatches = [(c, o, t) for c, o, t in zip(captions, ours, official) if o != t]
    assert not mismatches, mismatches[:5]


@needs_java
def test_caption_metrics_backends_agree_on_raw_captions():
    preds = {f"img{i}": c for i, c in enumerate(_random_captions(7, 25) + TRICKY[:5])}
    refs = {k: _random_captions(1000 + i, 5) for i, k in enumerate(preds)}
    official = caption_metrics(preds, refs, backend="pycocoevalcap", meteor=False)
    builtin = caption_metrics(preds, refs, backend="builtin")
    assert set(official) == set(builtin)
    for key in ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L"):
        assert builtin[key] == pytest.approx(official[key], abs=1e-6), key
    assert builtin["CIDEr"] == pytest.approx(official["CIDEr"], abs=1e-4)


@needs_java
@pytest.mark.slow
def test_meteor_runs_offline_from_the_pip_package():
    # one JVM start (METEOR loads a 60 MB paraphrase table): an exact match and a complete miss
    preds = {1: "a man riding a wave on a surfboard", 2: "a cat on a couch"}
    refs = {1: ["a man riding a wave on a surfboard", "a surfer on a wave"], 2: ["two dogs in the snow"]}
    assert resolve_backend("auto") == "pycocoevalcap"
    out = caption_metrics(preds, refs, backend="auto")
    assert set(out) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"}
    assert 0.2 < out["METEOR"] < 0.95


@needs_coco
def test_jars_ship_inside_the_package():
    # nothing is downloaded at run time: the tokenizer and METEOR jars (and METEOR's paraphrase table) are local
    root = Path(importlib.util.find_spec("pycocoevalcap").submodule_search_locations[0])
    for rel in ("tokenizer/stanford-corenlp-3.4.1.jar", "meteor/meteor-1.5.jar", "meteor/data/paraphrase-en.gz"):
        assert (root / rel).is_file(), rel


def test_backend_resolution_without_java(monkeypatch):
    monkeypatch.setattr(coco_caption.shutil, "which", lambda name: None)
    assert resolve_backend("auto") == "builtin"
    with pytest.raises(RuntimeError, match="java"):
        resolve_backend("pycocoevalcap")


@needs_coco
def test_punctuation_list_is_the_official_one():
    from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS

    assert COCO_PUNCTUATIONS == set(PUNCTUATIONS)
