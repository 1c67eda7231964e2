"""Helpers of the refexp / zero-shot / probe / perception tests: a tiny ShapesWorld with the COCO
instances, RefCOCO and region formats, and a tokenizer trained on its words."""

from __future__ import annotations

import json
from pathlib import Path

from vlp.data.safe_pickle import safe_load
from vlp.data.shapesworld import generate
from vlp.tasks.zeroshot import TEMPLATE_SETS
from vlp.text import Tokenizer


def make_world(root: Path, images: int = 60) -> Path:
    """``images`` images of 32x32 (about a second): captions, COCO instances, refs and region files."""
    world = root / "shapes"
    generate(world, images=images, size=32, seed=0, workers=1, formats=("albef", "coco", "refcoco", "regions"))
    return world


def train_tokenizer(world: Path, out: Path) -> Path:
    """A WordPiece tokenizer on the world's captions, referring expressions and prompt templates."""
    ann = world / "annotations"
    texts = [c["caption"] for c in json.loads((ann / "captions_train.json").read_text())]
    texts += [s["sent"] for ref in safe_load(ann / "refs(unc).p") for s in ref["sentences"]]
    texts += [t.format("shape") for templates in TEMPLATE_SETS.values() for t in templates]
    Tokenizer.train(texts, vocab_size=300).save(out)
    return out


def read_json(path: Path):
    return json.loads(Path(path).read_text())
