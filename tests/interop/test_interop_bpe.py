"""vlp's CLIP BPE tokenizer vs transformers' CLIPTokenizerFast on a tiny byte-level BPE built here."""

from __future__ import annotations

import pickle

import pytest
import torch
from interop_helpers import train_clip_bpe

import vlp
from vlp.text import Tokenizer
from vlp.text.bpe import ClipTokenizer, is_clip_tokenizer

transformers = pytest.importorskip("transformers")

TEXTS = [
    "a photo of a red circle",
    "  Two   BLUE\tsquares,\nleft of a green triangle!!  ",  # case and whitespace runs are normalized
    "café naïve 42 it's we'll",  # accents kept (NFC), digits one by one, contractions split off
    "😀 shapes ★",  # bytes without merges
    "what color is the shape on the right? " * 8,  # longer than max_length: cut, end token kept
    "",
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return train_clip_bpe(tmp_path_factory.mktemp("bpe"))


@pytest.fixture(scope="module")
def reference(files):
    return transformers.CLIPTokenizerFast.from_pretrained(files)


@pytest.mark.parametrize("padding", ["max_length", "longest"])
def test_ids_and_masks_equal_transformers(files, reference, padding):
    ours = ClipTokenizer.load(files)
    got = ours(TEXTS, max_length=24, padding=padding)
    ref = reference(TEXTS, padding=padding, max_length=24, truncation=True, return_tensors="pt")
    assert torch.equal(got.input_ids, ref["input_ids"])
    assert torch.equal(got.attention_mask, ref["attention_mask"].bool())
    assert got.input_ids.shape == (len(TEXTS), 24)  # the long text fills max_length either way
    assert got.input_ids[4, -1] == ours.eos_id and got.input_ids[0, 0] == ours.bos_id
    assert ours.pad_id == ours.eos_id == 343  # CLIP pads with <|endoftext|>
    # the default is CLIP's fixed context of 77
    assert ours(TEXTS[:1]).input_ids.shape == (1, 77)


def test_decode_equals_transformers(files, reference):
    ours = ClipTokenizer.load(files)
    for row in ours(TEXTS, max_length=24).input_ids:
        assert ours.decode(row) == reference.decode(row, skip_special_tokens=True)
    assert ours.decode(ours(["a photo of a red circle"]).input_ids[0]) == "a photo of a red circle"


def test_save_load_and_dispatch(files, reference, tmp_path):
    ours = ClipTokenizer.load(files)
    saved = ours.save(tmp_path / "saved")
    for again in (ClipTokenizer.load(saved), ClipTokenizer.load(saved / "tokenizer.json"), Tokenizer.load(saved)):
        assert torch.equal(again(TEXTS).input_ids, ours(TEXTS).input_ids)
    assert isinstance(vlp.load_tokenizer(saved), ClipTokenizer) and is_clip_tokenizer(files)
    assert (
        transformers.CLIPTokenizerFast.from_pretrained(saved)(TEXTS[0])["input_ids"] == reference(TEXTS[0])["input_ids"]
    )
    clone = pickle.loads(pickle.dumps(ours))  # DataLoader workers
    assert torch.equal(clone(TEXTS).input_ids, ours(TEXTS).input_ids)


def test_bad_inputs_are_named(files, tmp_path):
    ours = ClipTokenizer.load(files)
    with pytest.raises(TypeError, match="wrap it in a list"):
        ours("a photo")
    with pytest.raises(ValueError, match="pair is not supported"):
        ours(["a"], pair=["b"])
    (tmp_path / "vocab.json").write_text('{"a": 0}')
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(ValueError, match=r"vocabulary lacks <\|startoftext\|>, <\|endoftext\|>"):
        ClipTokenizer.load(tmp_path)
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b c\n")
    with pytest.raises(ValueError, match=r"merges\.txt: merge 1 is 'a b c'"):
        ClipTokenizer.load(tmp_path)
