"""Shared set-up of the training-engine tests."""

from __future__ import annotations

import json
import os
import sys

import pytest

# the toy job (toy_train.py) and the worker script live next to the tests
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def shapes(tmp_path_factory):
    """A small ShapesWorld (40 images of 32 px, ALBEF captions) and a 120-token tokenizer trained on it."""
    from vlp.data.shapesworld.generate import generate
    from vlp.text import Tokenizer

    root = tmp_path_factory.mktemp("shapes")
    generate(root / "data", images=40, size=32, seed=0, workers=1, formats=["albef"])
    captions = json.loads((root / "data" / "annotations" / "captions_train.json").read_text())
    tokenizer = Tokenizer.train([c["caption"] for c in captions], vocab_size=120)
    tokenizer.save(root / "tok")
    return root
