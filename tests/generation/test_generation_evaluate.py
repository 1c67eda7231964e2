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
