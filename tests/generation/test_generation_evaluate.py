"""Attribute classifier (real renders vs noise), CLIP-score with a vlp dual encoder, and the whole evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vlp
from vlp.data.config import CLIP_MEAN, CLIP_STD
from vlp.generation.classifier import (
    ClassifierConfig,
    load_classifier,
    random_pairs,
    render_objects,
    save_classifier,
    train_classifier,
)
from vlp.generation.controlnet import ControlConfig
from vlp.generation.evaluate import CHANCE, _other_prompt, attribute_prompts, evaluate_generation, format_results
from vlp.generation.scoring import clip_scores


@pytest.fixture(scope="module")
def classifier32():
    # a test-sized run (the shipped default trains 300 steps of 64 at width 16)
    return train_classifier(ClassifierConfig(width=8, steps=200, batch_size=32, seed=0))


def test_classifier_reads_real_renders_and_is_at_chance_on_noise(classifier32, tmp_path):
    rng = np.random.default_rng(99)
    images, shapes, colors, _ = render_objects(random_pairs(300, rng), 32, rng)
    pred_shape, pred_color = classifier32.predict(images)
    assert (pred_color == colors).float().mean() > 0.98
    assert (pred_shape == shapes).float().mean() > 0.9  # chance is 1/6
    noise = torch.rand(300, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    noise_shape, noise_color = classifier32.predict(noise)
    # targets are drawn independently of the noise, so any classifier scores chance on them
    assert abs((noise_shape == shapes).float().mean().item() - 1 / 6) < 0.08
    assert abs((noise_color == colors).float().mean().item() - 1 / 7) < 0.08
    loaded = load_classifier(save_classifier(classifier32, tmp_path / "cls"))
    assert torch.equal(loaded.predict(images)[0], pred_shape)


def test_clip_score_with_a_vlp_dual_encoder(tokenizer):
    torch.manual_seed(0)
    model = vlp.create_model("clip-tiny").eval()  # 32 px patches, CLIP mean / std
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    texts = ["a red circle", "a blue square", "a big cross"]
    scores = clip_scores(model, tokenizer, images, texts)
    with torch.no_grad():
        pixels = ((images + 1) / 2 - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        tokens = tokenizer(texts, max_length=24)
        cos = F.cosine_similarity(
            model.encode_image(pixels), model.encode_text(tokens.input_ids, tokens.attention_mask)
        )
    assert torch.allclose(scores, 100 * cos.clamp_min(0), atol=1e-4)
    assert clip_scores(model, tokenizer, torch.rand(3, 3, 16, 16) * 2 - 1, texts).shape == (3,)  # resized to 32


def test_prompts_cover_every_pair_and_mismatches_change_both_attributes():
    prompts = attribute_prompts()
    assert len(prompts) == 42 and prompts[0] == ("a red circle", "circle", "red")
    rows = [p for p in prompts for _ in range(3)]
    other = _other_prompt(rows, 3)
    assert all(a[1] != b[1] and a[2] != b[2] for a, b in zip(rows, other))


def test_evaluate_generation_end_to_end(tiny_model, tokenizer):
    """A tiny untrained model: the numbers are not good, but every path runs and the references are right."""
    classifier = train_classifier(ClassifierConfig(image_size=16, width=4, steps=5, batch_size=8))
    tiny_model.add_control(ControlConfig(kind="layout", hint_channels=[4]))
    tiny_model.eval()
    torch.manual_seed(0)
    dual = vlp.create_model("clip-tiny")
    results = evaluate_generation(
        tiny_model,
        samples=1,
        steps=2,
        classifier=classifier,
        dual_encoder=dual,
        dual_tokenizer=tokenizer,
        batch_size=42,
    )
    acc = results["attribute_accuracy"]
    assert acc["chance"] == CHANCE and results["settings"]["images"] == 42
    for row in ("generated", "real"):
        assert set(acc[row]) == {"shape", "color", "both"}
        assert acc[row]["both"] <= min(acc[row]["shape"], acc[row]["color"])
    # the real reference is the classifier's accuracy on renders of the same prompts with the same seed
    rng = np.random.default_rng(np.random.SeedSequence([0, 23]))
    images, shapes, colors, _ = render_objects([(s, c) for _, s, c in attribute_prompts()], 16, rng)
    assert acc["real"]["color"] == pytest.approx((classifier.predict(images)[1] == colors).float().mean().item())
    iou = results["layout_iou"]
    assert iou["kind"] == "layout" and iou["real"] > 0.6  # colour segmentation of real renders finds the layout box
    assert set(results["clip_score"]) == {"generated", "real", "mismatched"}
    assert all(0 <= v <= 100 for v in results["clip_score"].values())
    assert "CLIP-score" in format_results(results)


def test_eval_generation_on_the_captions_of_a_caption_folder(tiny_model, tokenizer, tmp_path, capsys):
    """`vlp eval generation --data FOLDER`: the val captions are the prompts; the real CLIP-score equals one
    computed here from the image files, the mismatched one pairs each image with the caption half the list away."""
    import json

    from PIL import Image

    from vlp.cli import main
    from vlp.generation.model import save_generator

    colours = {"red": (215, 38, 38), "blue": (40, 90, 220), "green": (40, 160, 60), "yellow": (230, 200, 30)}
    folder = tmp_path / "folder"
    (folder / "images").mkdir(parents=True)
    records = []
    for i, (name, rgb) in enumerate(colours.items()):
        Image.new("RGB", (16, 16), rgb).save(folder / "images" / f"{name}.png")
        sentence = {"raw": f"a {name} circle", "tokens": ["a", name, "circle"], "sentid": i}
        records.append({"filepath": "images", "filename": f"{name}.png", "split": "val", "sentences": [sentence]})
    (folder / "dataset_colours.json").write_text(json.dumps({"images": records}))
    torch.manual_seed(0)
    dual = vlp.create_model("clip-tiny").eval()
    vlp.save_pretrained(dual, tmp_path / "dual", tokenizer=tokenizer)
    save_generator(tiny_model, tmp_path / "gen")
    args = ["eval", "generation", "--model", str(tmp_path / "gen"), "--data", str(folder), "--sampling-steps", "2"]
    args += ["--prompts", "4", "--out", str(tmp_path / "out")]
    assert main(args) == 2  # CLIP-score needs the encoder
    assert "--data: scoring the captions of other data needs --dual-encoder" in capsys.readouterr().err
    assert main(args + ["--dual-encoder", str(tmp_path / "dual")]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert "attribute_accuracy" not in results and results["settings"]["images"] == 4
    captions = [f"a {name} circle" for name in colours]
    pixels = torch.stack([torch.tensor(rgb, dtype=torch.float32) / 127.5 - 1 for rgb in colours.values()])
    real = pixels[:, :, None, None].expand(4, 3, 16, 16)
    expected = float(clip_scores(dual, tokenizer, real, captions).mean())
    assert results["clip_score"]["real"] == pytest.approx(expected, abs=1e-4)
    assert 0 <= results["clip_score"]["generated"] <= 100 and 0 <= results["clip_score"]["mismatched"] <= 100
    assert "CLIP-score" in capsys.readouterr().out
