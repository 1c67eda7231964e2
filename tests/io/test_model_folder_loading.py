"""One implementation behind every way of reading a model folder: the tokenizer (``vlp.load_tokenizer`` /
``vlp.io.saving`` and ``vlp.io.folders``) and the strict weights check (``vlp.load``, ``from_pretrained``,
``load_model``) give the same errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

import vlp
from vlp.config import ConfigError, read_yaml
from vlp.io import folders, saving
from vlp.io.saving import WEIGHTS_NAME
from vlp.text import Tokenizer


def _error(fn, *args) -> tuple[type, str]:
    with pytest.raises(Exception) as err:
        fn(*args)
    return type(err.value), str(err.value)


@pytest.mark.parametrize("missing", [False, True])
def test_every_load_tokenizer_gives_the_same_error_naming_the_folder(tmp_path, missing):
    folder = tmp_path / "model"
    if not missing:
        folder.mkdir()
        (folder / "recipe.yaml").write_text("model: {}\n")  # a model folder saved without a tokenizer
    errors = {_error(f, folder) for f in (vlp.load_tokenizer, saving.load_tokenizer, folders.load_tokenizer)}
    assert len(errors) == 1, errors
    kind, message = errors.pop()
    assert issubclass(kind, ConfigError)  # bad input: the vlp command reports it in one line, exit 2
    assert f"cannot load a tokenizer from {str(folder)!r}" in message
    expected = "no such tokenizer file or folder" if missing else "folder holds neither tokenizer.json nor vocab.txt"
    assert expected in message and "tokenizer.json" in message and "vocab.txt" in message


def test_every_load_tokenizer_reads_the_same_tokenizer(tmp_path):
    tok = Tokenizer.train(["a red circle left of a blue square", "two green triangles"], vocab_size=40)
    tok.save(tmp_path)
    for load in (vlp.load_tokenizer, saving.load_tokenizer, folders.load_tokenizer):
        assert load(tmp_path).get_vocab() == tok.get_vocab()
    assert saving.load_tokenizer(tmp_path / "vocab.txt").get_vocab() == tok.get_vocab()  # a file, too


def test_every_model_folder_loader_refuses_unfitting_weights_with_one_message(tmp_path):
    folder = vlp.save_pretrained(vlp.create_model("clip-tiny"), tmp_path / "clip")
    weights = load_file(folder / WEIGHTS_NAME)
    name = sorted(weights)[0]
    weights[name] = torch.zeros(3, 5)
    extra = "not.a.weight"
    weights[extra] = torch.zeros(1)
    save_file(weights, folder / WEIGHTS_NAME)
    loaders = (vlp.load, folders.from_pretrained, lambda f: folders.load_model(f, require_tokenizer=False))
    errors = {_error(load, folder) for load in loaders}
    assert len(errors) == 1, errors
    kind, message = errors.pop()
    assert issubclass(kind, ConfigError)
    assert message == f"{folder / WEIGHTS_NAME}: does not fit the model: unexpected keys: {extra}"
    del weights[extra]
    save_file(weights, folder / WEIGHTS_NAME)
    errors = {_error(load, folder) for load in loaders}
    assert len(errors) == 1, errors
    assert errors.pop()[1].startswith(f"{folder / WEIGHTS_NAME}: shape mismatch: {name} (3, 5) vs model (")


def test_load_model_reads_the_recipe_once(tmp_path, monkeypatch):
    folder = vlp.save_pretrained(vlp.create_model("clip-tiny"), tmp_path / "clip")
    reads = []

    def counting_read_yaml(path):
        reads.append(path)
        return read_yaml(path)

    monkeypatch.setattr(folders, "read_yaml", counting_read_yaml)
    monkeypatch.setattr(saving, "read_yaml", counting_read_yaml)
    loaded = folders.load_model(folder, require_tokenizer=False)
    assert reads == [folder / "recipe.yaml"]
    assert loaded.recipe is not None and loaded.task == {}
