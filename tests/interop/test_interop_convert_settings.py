"""`vlp convert` takes the data settings from the checkpoint: image size and text length from the model
config, pixel statistics from processor_config.json (transformers 5) or preprocessor_config.json."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from interop_helpers import close, perturb, train_clip_bpe
from PIL import Image

import vlp
from vlp.cli import main
from vlp.interop.preprocess import load_preprocess
from vlp.tasks import retrieval

transformers = pytest.importorskip("transformers")

VOCAB, SOT, EOT = 344, 342, 343  # the tiny BPE of interop_helpers
MEAN, STD = [0.5, 0.4, 0.3], [0.25, 0.5, 0.75]  # not CLIP's, so that a default cannot pass for them
LONG = " ".join(["the large yellow circle is above the small square"] * 12)  # far more than 77 tokens


def image_processor():
    return transformers.CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_mean=MEAN, image_std=STD
    )


def write_clip(folder, preprocessing: str) -> transformers.CLIPModel:
    """A tiny CLIP whose vision tower takes 32-pixel images and whose text tower has 32 positions,
    saved by transformers with its image settings in ``preprocessing`` (processor / preprocessor / none)."""
    text = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
                max_position_embeddings=32, bos_token_id=SOT, eos_token_id=EOT, pad_token_id=EOT)  # fmt: skip
    vision = dict(hidden_size=24, intermediate_size=40, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=8)  # fmt: skip
    torch.manual_seed(0)
    model = perturb(transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision)))
    model.save_pretrained(folder)
    train_clip_bpe(folder)
    if preprocessing == "processor":  # transformers 5: one processor_config.json with an image_processor section
        tokenizer = transformers.CLIPTokenizerFast.from_pretrained(folder)
        transformers.CLIPProcessor(image_processor=image_processor(), tokenizer=tokenizer).save_pretrained(folder)
        assert "image_processor" in json.loads((folder / "processor_config.json").read_text())
        assert not (folder / "preprocessor_config.json").exists()
    elif preprocessing == "preprocessor":
        image_processor().save_pretrained(folder)
        assert (folder / "preprocessor_config.json").is_file()
    return model.eval()


def pictures() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((40, 56), (32, 32))]


@pytest.mark.parametrize("preprocessing", ["processor", "preprocessor"])
def test_convert_reads_the_image_settings_and_the_text_length(preprocessing, tmp_path, capsys):
    reference = write_clip(tmp_path / "hf", preprocessing)
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "vlp")]) == 0
    data = yaml.safe_load((tmp_path / "vlp" / "recipe.yaml").read_text())["data"]
    assert data["image_size"] == 32 and data["max_text_len"] == 32
    assert data["transform"]["mean"] == MEAN and data["transform"]["std"] == STD
    pre = load_preprocess(tmp_path / "vlp")
    assert list(pre.mean) == MEAN and list(pre.std) == STD and pre.crop == (32, 32)
    source = "processor_config.json" if preprocessing == "processor" else "preprocessor_config.json"
    assert f"from {source}" in capsys.readouterr().out
    # the pixels are transformers' own
    for picture in pictures():
        want = image_processor()(images=picture, return_tensors="pt")["pixel_values"][0]
        close(pre(picture), want, 1e-5)
    # a text far longer than the tower's 32 positions is cut to them, not refused, and embeds as transformers does
    model, tokenizer = vlp.load(tmp_path / "vlp"), vlp.load_tokenizer(tmp_path / "vlp")
    found = retrieval.retrieve(model, tokenizer, pictures(), [LONG, "a red circle"], k=2)
    assert found.i2t.shape == (2, 2)
    both = tokenizer([LONG, "a red circle"], max_length=model.recipe.data.max_text_len)
    pixels = image_processor()(images=pictures(), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        cosine = reference(input_ids=both.input_ids, attention_mask=both.attention_mask, pixel_values=pixels)
        cosine = cosine.logits_per_image / reference.logit_scale.exp()
    assert torch.equal(found.i2t, cosine.argsort(dim=1, descending=True))  # transformers' ranking, and its scores
    close(found.i2t_scores, cosine.sort(dim=1, descending=True).values, 1e-4)
    tokens = tokenizer([LONG], max_length=model.recipe.data.max_text_len)
    assert tokens.input_ids.shape == (1, 32) and int(tokens.input_ids[0, -1]) == EOT
    with torch.no_grad():
        ours = model.encode_text(tokens.input_ids, tokens.attention_mask.bool())
        want = reference(input_ids=tokens.input_ids, pixel_values=torch.zeros(1, 3, 32, 32)).text_embeds
    close(ours, want)


def test_convert_without_image_settings_says_which_defaults_it_used(tmp_path, capsys):
    write_clip(tmp_path / "hf", "none")
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "vlp")]) == 0
    out = capsys.readouterr().out
    assert "no preprocessor_config.json or processor_config.json" in out
    data = yaml.safe_load((tmp_path / "vlp" / "recipe.yaml").read_text())["data"]
    assert data["image_size"] == 32 and data["max_text_len"] == 32  # the towers', not the clip recipe's 224 / 77
    assert "image_size 32" in out and "max_text_len 32" in out and str(data["transform"]["mean"]) in out
    model, tokenizer = vlp.load(tmp_path / "vlp"), vlp.load_tokenizer(tmp_path / "vlp")
    assert retrieval.retrieve(model, tokenizer, pictures(), [LONG], k=1).t2i.shape == (1, 1)


def test_processor_config_comes_first_as_in_transformers(tmp_path):
    from vlp.interop.preprocess import from_hf

    (tmp_path / "processor_config.json").write_text(json.dumps({"processor_class": "CLIPProcessor"}))
    assert from_hf(tmp_path) is None  # a processor without image settings
    image_processor().save_pretrained(tmp_path)  # preprocessor_config.json
    nested = transformers.CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    (tmp_path / "processor_config.json").write_text(json.dumps({"image_processor": nested.to_dict()}))
    assert from_hf(tmp_path).crop == (16, 16)
    assert transformers.CLIPImageProcessor.from_pretrained(tmp_path).crop_size["height"] == 16  # the same choice
    (tmp_path / "processor_config.json").write_text(json.dumps({"image_processor": [1]}))
    with pytest.raises(ValueError, match=r"processor_config\.json: image_processor must be a JSON object, got \[1\]"):
        from_hf(tmp_path)
