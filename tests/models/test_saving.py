"""save_pretrained / load: identical outputs, strict keys, truncation, atomic overwrite."""

from __future__ import annotations

import json
import os

import pytest
import torch
import yaml
from safetensors import safe_open

import vlp
from vlp import Batch
from vlp.io.saving import RECIPE_NAME, WEIGHTS_NAME, CheckpointError, load_weights
from vlp.recipe import load_recipe
from vlp.text import Tokenizer


def batch() -> Batch:
    g = torch.Generator().manual_seed(0)
    mask = torch.tensor([[1] * 6, [1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    return Batch(
        input_ids=torch.randint(5, 1000, (2, 6), generator=g).masked_fill(~mask, 0),
        attention_mask=mask,
        images=torch.randn(2, 3, 32, 32, generator=g),
    )


def outputs(model, b):
    with torch.no_grad():
        out = model(b)
        fused = model.fuse(out.text, out.text_mask, out.image)
        return [
            out.text_embed,
            out.image_embed,
            fused.text,
            model.heads["itm"](fused.pooled),
            model.heads["mlm"](fused.text),
        ]


@pytest.fixture(scope="module")
def albef():
    torch.manual_seed(0)
    model = vlp.create_model("albef-tiny").eval()
    with torch.no_grad():  # non-default values everywhere, so a skipped tensor would show
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return model


def test_save_load_gives_identical_outputs(albef, tmp_path):
    tok = Tokenizer.train(["a red circle left of a blue square", "two green triangles"], vocab_size=40)
    folder = vlp.save_pretrained(albef, tmp_path / "ckpt", tokenizer=tok)
    assert {"model.safetensors", "recipe.yaml", "tokenizer.json", "vocab.txt"} <= set(os.listdir(folder))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temp folders left behind
    loaded = vlp.load(folder)
    assert not loaded.training and loaded.recipe.model == albef.cfg
    b = batch()
    for mine, theirs in zip(outputs(albef, b), outputs(loaded, b)):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)
    assert loaded.heads["mlm"].decoder.weight is loaded.text.embeddings.word.weight  # still tied
    assert vlp.load_tokenizer(folder).get_vocab() == tok.get_vocab()
    # the tied MLM decoder is stored once, with its alias in the metadata
    with safe_open(folder / WEIGHTS_NAME, "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    assert "text.embeddings.word.weight" in keys and "heads.mlm.decoder.weight" not in keys
    assert json.loads(meta["aliases"]) == {"heads.mlm.decoder.weight": "text.embeddings.word.weight"}


def test_recipe_beside_the_weights_rebuilds_an_identical_model(albef, tmp_path):
    folder = vlp.save_pretrained(albef, tmp_path / "ckpt")
    recipe = load_recipe(folder / RECIPE_NAME)
    assert recipe == albef.recipe
    rebuilt = load_weights(vlp.create_model(recipe), folder / WEIGHTS_NAME).eval()
    b = batch()
    for mine, theirs in zip(outputs(albef, b), outputs(rebuilt, b)):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)


def test_truncated_or_missing_weights_fail_clearly(albef, tmp_path):
    folder = vlp.save_pretrained(albef, tmp_path / "ckpt")
    path = folder / WEIGHTS_NAME
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match=rf"{path}: truncated: the header describes \d+ bytes of tensor data"):
        vlp.load(folder)
    path.write_bytes(data[:20])
    with pytest.raises(CheckpointError, match="truncated or not a safetensors file"):
        vlp.load(folder)
    path.unlink()
    with pytest.raises(CheckpointError, match=f"{path}: weights file not found"):
        vlp.load(folder)


def test_missing_and_unexpected_keys_are_named(tmp_path):
    small = vlp.create_model("vilt-tiny")
    folder = vlp.save_pretrained(small, tmp_path / "ckpt")
    other = vlp.create_model("vilt-tiny", **{"model.heads": {"mlm": {}, "vqa": {"num_answers": 3}}})
    with pytest.raises(CheckpointError) as err:
        load_weights(other, folder / WEIGHTS_NAME)
    message = str(err.value)
    assert str(folder / WEIGHTS_NAME) in message
    assert "missing keys: heads.vqa.0.bias, heads.vqa.0.weight" in message
    assert "unexpected keys: heads.itm.bias, heads.itm.weight" in message
    deeper = vlp.create_model("vilt-tiny", **{"model.fusion.mlp_ratio": 2.0})
    with pytest.raises(
        CheckpointError, match=r"shape mismatch: fusion.encoder.layers.0.mlp.fc1.weight \(128, 32\) vs model \(64, 32\)"
    ):
        load_weights(deeper, folder / WEIGHTS_NAME)


def test_overwrite_is_refused_unless_asked(tmp_path):
    a = vlp.create_model("clip-tiny")
    torch.manual_seed(1)
    b = vlp.create_model("clip-tiny")
    folder = vlp.save_pretrained(a, tmp_path / "ckpt")
    with pytest.raises(FileExistsError, match="folder is not empty; pass overwrite=True"):
        vlp.save_pretrained(b, folder)
    vlp.save_pretrained(b, folder, overwrite=True)
    loaded = vlp.load(folder)
    torch.testing.assert_close(loaded.logit_scale, b.logit_scale)
    torch.testing.assert_close(loaded.text_proj.weight, b.text_proj.weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    (tmp_path / "empty").mkdir()
    vlp.save_pretrained(a, tmp_path / "empty")  # an empty folder is fine


def test_blip_shared_modules_survive_a_round_trip(tmp_path):
    text = {
        "type": "bert",
        "vocab_size": 50,
        "dim": 16,
        "layers": 2,
        "heads": 2,
        "mlp_dim": 32,
        "max_positions": 16,
        "dropout": 0.0,
        "cross_attention_from": 0,
    }
    cfg = {
        "model": {
            "text": text,
            "vision": {"type": "patch", "image_size": 16, "patch_size": 8, "dim": 16, "layers": 1, "heads": 2},
            "fusion": {"type": "text_cross", "from_layer": 0, "restart": True},
            "decoder": {**text, "causal": True},
            "decoder_share": "all_but_self_attention",
            "embed_dim": 8,
        }
    }
    torch.manual_seed(0)
    model = vlp.create_model(cfg).eval()
    model.recipe = None  # a bare model: only its config is saved
    folder = vlp.save_pretrained(model, tmp_path / "blip")
    assert list(yaml.safe_load((folder / RECIPE_NAME).read_text())) == ["model"]
    loaded = vlp.load(folder)
    assert loaded.recipe is None and loaded.cfg == model.cfg
    assert loaded.decoder.layers[1].mlp is loaded.text.layers[1].mlp
    ids, images = torch.randint(5, 50, (2, 6)), torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        image = model.image_tokens(images)
        torch.testing.assert_close(
            model.decode(ids, None, image), loaded.decode(ids, None, loaded.image_tokens(images))
        )
