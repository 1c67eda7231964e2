"""Tokenizer files of the wrong kind, caption corpora and the ``vlp tokenizer`` command."""

import json

import pytest

from vlp.cli import main
from vlp.text import Tokenizer
from vlp.text.corpus import read_captions

SPECIALS = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n"


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("tokenizer_config.json", json.dumps({"do_lower_case": True}), "JSON without a 'model' section"),
        ("tokenizer.json", "{not json", "is not valid JSON"),
        ("weights.bin", b"\x00\x01\x02binary", "is a binary file"),
        ("vocab.txt", b"\xff\xfe\xfa", "is not UTF-8 text"),
        ("vocab.txt", "\n\n", "empty vocab"),
        ("vocab.txt", "[PAD]\n[UNK]\na\nb\n", r"lacks the special tokens \[CLS\], \[SEP\], \[MASK\]"),
        ("vocab.txt", SPECIALS + "a\nb\na\n", r"token 'a' appears on lines 6 and 8"),
    ],
)
def test_wrong_kind_of_file_names_path_and_expectation(tmp_path, name, content, message):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message) as info:
        Tokenizer.load(path)
    assert str(path) in str(info.value)


def test_non_wordpiece_tokenizer_json_is_refused(tmp_path):
    from tokenizers import Tokenizer as Backend
    from tokenizers import models

    path = tmp_path / "tokenizer.json"
    Backend(models.BPE()).save(str(path))
    with pytest.raises(ValueError, match="tokenizer model is BPE; .* expects a WordPiece"):
        Tokenizer.load(path)


def test_folder_without_tokenizer_files_and_missing_path(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="folder holds neither tokenizer.json nor vocab.txt"):
        Tokenizer.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such tokenizer file or folder"):
        Tokenizer.load(tmp_path / "absent")


def test_vocab_and_json_files_load_directly(tmp_path):
    tok = Tokenizer.train(["a dog on a hill", "two dogs"], vocab_size=60)
    tok.save(tmp_path)
    ids = tok(["two dogs on a hill"]).input_ids
    assert Tokenizer.load(tmp_path / "vocab.txt")(["two dogs on a hill"]).input_ids.tolist() == ids.tolist()
    renamed = tmp_path / "my_tokenizer.data"  # JSON content is sniffed, whatever the suffix
    renamed.write_text((tmp_path / "tokenizer.json").read_text())
    assert Tokenizer.load(renamed)(["two dogs on a hill"]).input_ids.tolist() == ids.tolist()


def write(path, data):
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


def test_read_captions_in_every_format(tmp_path):
    karpathy = {"images": [{"sentences": [{"raw": "A dog."}, {"raw": "A cat."}]}, {"sentences": [{"raw": "Sky"}]}]}
    assert read_captions(write(tmp_path / "k.json", karpathy)) == ["A dog.", "A cat.", "Sky"]
    albef = [{"caption": "one", "image": "x.jpg"}, {"caption": ["two", "three"]}]
    assert read_captions(write(tmp_path / "a.json", albef)) == ["one", "two", "three"]
    coco = {"images": [{"id": 1}], "annotations": [{"image_id": 1, "caption": " four "}]}
    assert read_captions(write(tmp_path / "c.json", coco)) == ["four"]
    jsonl = '{"caption": "five"}\n\n{"text": ["six", "seven"]}\n'
    assert read_captions(write(tmp_path / "d.jsonl", jsonl)) == ["five", "six", "seven"]
    assert read_captions(write(tmp_path / "e.txt", "eight\n\n  nine \n")) == ["eight", "nine"]


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("bad.json", {"foo": 1}, r"unrecognized caption JSON \(top level: foo\); expected Karpathy"),
        ("bad.json", [{"caption": 3}], r"record\[0\]\.caption: expected a string or a list of strings"),
        ("bad.json", [{"url": "x"}], r"record\[0\]: has no 'caption' or 'text' key \(keys: url\)"),
        ("bad.json", {"images": [{"sentences": [{"tokens": 4}]}]}, r"images\[0\]\.sentences\[0\] has no 'raw'"),
        ("bad.jsonl", '{"caption": "ok"}\n{oops\n', r"bad\.jsonl:2: is not valid JSON"),
        ("bad.txt", "\n \n", "holds no captions"),
    ],
)
def test_bad_caption_files_name_file_and_record(tmp_path, name, data, message):
    with pytest.raises(ValueError, match=message):
        read_captions(write(tmp_path / name, data))


def test_cli_train_then_encode(tmp_path, capsys):
    captions = [{"caption": c} for c in ["A man riding a horse.", "Two dogs playing in the snow.", "A red hat."]]
    source = write(tmp_path / "captions.json", captions)
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", "--input", str(source), "--out", str(out), "--vocab-size", "80"]) == 0
    printed = capsys.readouterr().out
    tok = Tokenizer.load(out)
    assert "read 3 captions" in printed and f"vocab size {tok.vocab_size}" in printed
    assert "[CLS] a man riding a horse . [SEP]" in printed
    assert main(["tokenizer", "encode", "--tokenizer", str(out), "two dogs"]) == 0
    printed = capsys.readouterr().out
    assert f"ids       {tok(['two dogs']).input_ids[0].tolist()}" in printed


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["tokenizer", "train", "--input", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "o")]) == 2
    assert "vlp tokenizer train: " in capsys.readouterr().err
    assert main(["tokenizer", "encode", "--tokenizer", str(tmp_path), "x"]) == 2
    assert "folder holds neither tokenizer.json nor vocab.txt" in capsys.readouterr().err
