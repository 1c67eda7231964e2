"""Zero-shot classification: template ensembling, top-k accuracy, labels of COCO-instances images,
``classify`` and the prompt-contrastive fine-tuning loss, each against a hand-worked reference."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from PIL import Image

import vlp
from vlp.config import ConfigError
from vlp.data.batch import Batch
from vlp.metrics.classification import topk_accuracy
from vlp.tasks import zeroshot
from vlp.tasks.common import preprocess_images
from vlp.text import Tokenizer

SHAPES = ["circle", "square", "triangle"]


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    model = vlp.create_model("clip-tiny").eval()
    tok = Tokenizer.train(["a photo of a red circle", "a blue square shape", "a picture of a triangle"] * 3, 90)
    return model, tok


def test_ensemble_is_the_renormalized_mean_of_normalized_embeddings():
    embeds = torch.tensor([[[3.0, 4.0], [2.0, 0.0]], [[0.0, -1.0], [0.0, 5.0]]])  # (C=2, T=2, E=2)
    # class 0: (0.6, 0.8) and (1, 0) -> mean (0.8, 0.4) -> / sqrt(0.8) ; class 1: (0, -1), (0, 1) -> mean 0 stays 0
    out = zeroshot.ensemble(embeds)
    assert out[0].tolist() == pytest.approx([0.8 / math.sqrt(0.8), 0.4 / math.sqrt(0.8)])
    assert out[1].tolist() == pytest.approx([0.0, 0.0])


def test_class_embeddings_equal_the_manual_template_average(clip):
    model, tok = clip
    templates = ["a photo of a {}.", "a {} shape."]
    got = zeroshot.class_embeddings(model, tok, SHAPES, templates, max_len=16)
    with torch.no_grad():
        for c, name in enumerate(SHAPES):
            rows = []
            for t in templates:
                ids = tok([t.format(name)], max_length=16)
                rows.append(model.encode_text(ids.input_ids, ids.attention_mask.bool())[0])
            mean = torch.stack(rows).mean(0)
            assert got[c].tolist() == pytest.approx((mean / mean.norm()).tolist(), abs=1e-5)


def test_topk_accuracy_and_scores_on_designed_embeddings():
    logits = torch.tensor(
        [
            [5.0, 1.0, 0.0, 0.0, 0.0, 0.0],  # label 0: rank 0
            [5.0, 4.0, 3.0, 2.0, 1.0, 0.0],  # label 5: rank 5 (outside the top 5)
            [1.0, 2.0, 2.0, 0.0, 0.0, 0.0],
        ]
    )  # label 1, tied with class 2: rank 1
    labels = torch.tensor([0, 5, 1])  # fmt: skip
    assert topk_accuracy(logits, labels) == pytest.approx({"top1": 100 / 3, "top5": 200 / 3})
    # a constant classifier is not credited by ties
    assert topk_accuracy(torch.zeros(2, 6), torch.tensor([0, 3]))["top1"] == 0.0
    images = torch.eye(3)  # image i embeds as e_i
    classes = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.6, 0.8, 0.0]])
    scores = zeroshot.zero_shot_scores(images, classes, torch.tensor([0, 1, 1]))
    # image 0 -> class 0 (right); image 1 -> class 3 (0.8) then 2 (wrong); image 2 -> class 1 (right)
    assert scores["top1"] == pytest.approx(200 / 3) and scores["top5"] == 100.0
    assert scores["mean_class_accuracy"] == pytest.approx(100 * (1.0 + 0.5) / 2)
    assert scores["chance"] == pytest.approx({"top1": 25.0, "top5": 100.0, "majority": 200 / 3})


def test_record_labels_follow_the_main_object():
    record = {"image": "x.png", "boxes": [[0, 0, 4, 4], [0, 0, 10, 6], [5, 5, 7, 7]], "labels": [0, 2, 1],
              "attributes": [{"color": "red"}, {"color": "blue"}, {"color": "green"}]}  # fmt: skip
    assert zeroshot.record_label(record, "shape", "largest", SHAPES) == "triangle"
    assert zeroshot.record_label(record, "color", "largest", SHAPES) == "blue"
    assert zeroshot.record_label(record, "color_shape", "largest", SHAPES) == "blue triangle"
    assert zeroshot.record_label(record, "shape", "single", SHAPES) is None
    single = {"boxes": [[0, 0, 1, 1]], "labels": [1], "attributes": [{"color": "red"}]}
    assert zeroshot.record_label(single, "color_shape", "single", SHAPES) == "red square"
    assert zeroshot.class_vocabulary("color_shape", SHAPES, ["red", "blue"])[:4] == [
        "red circle", "red square", "red triangle", "blue circle"]  # fmt: skip
    with pytest.raises(ConfigError, match="attributes.color"):
        zeroshot.record_label({**single, "attributes": [{}]}, "color", "largest", SHAPES)


def test_templates_by_name_or_text_and_bad_ones_refused():
    assert zeroshot.resolve_templates("photo") == ["a photo of a {}."]
    assert zeroshot.resolve_templates("a {} shape.; a picture of a {}.") == ["a {} shape.", "a picture of a {}."]
    with pytest.raises(ConfigError, match="exactly once"):
        zeroshot.resolve_templates(["a photo"])


def test_classify_equals_softmax_of_scaled_cosines(clip):
    model, tok = clip
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(3)]
    labels, probs = zeroshot.classify(model, tok, images, SHAPES, "photo")
    with torch.no_grad():
        image = model.encode_image(preprocess_images(images, model.recipe.data))
        classes = zeroshot.class_embeddings(model, tok, SHAPES, "photo", model.recipe.data.max_text_len)
        want = (model.logit_scale.exp().clamp(max=100) * image @ classes.T).softmax(-1)
    assert probs.shape == (3, 3) and probs.sum(1).tolist() == pytest.approx([1.0] * 3)
    assert probs.tolist() == [pytest.approx(row, abs=1e-5) for row in want.tolist()]
    assert labels == [SHAPES[i] for i in want.argmax(1).tolist()]
    with pytest.raises(TypeError, match="class_names"):
        zeroshot.classify(model, tok, images, "circle")


def test_prompt_contrastive_loss_is_cross_entropy_against_every_class_prompt(clip):
    model, tok = clip
    templates = ["a photo of a {}.", "a {} shape."]
    module = zeroshot.PromptContrastive(model, tok, SHAPES, templates, "shape", "largest", SHAPES, 16, seed=3)
    meta = [  # image 0: the biggest object is a square; image 1: one circle; image 2: no object (ignored)
        {"labels": [0, 1], "attributes": [{"color": "red"}, {"color": "blue"}], "box_keep": [True, True]},
        {"labels": [0], "attributes": [{"color": "red"}]},
        {"labels": [], "attributes": []},
    ]
    boxes = torch.zeros(3, 2, 4)
    boxes[0] = torch.tensor([[0.0, 0.0, 0.1, 0.1], [0.2, 0.2, 0.7, 0.7]])
    boxes[1, 0] = torch.tensor([0.1, 0.1, 0.3, 0.3])
    batch = Batch(images=torch.randn(3, 3, 32, 32), region_boxes=boxes, meta=meta)
    assert zeroshot.batch_labels(batch, "shape", "largest", SHAPES, SHAPES).tolist() == [1, 0, -100]
    loss, logs = module(batch)
    draws = random.Random(3)  # the module's template draws
    chosen = [draws.choice(templates).format(n) for n in SHAPES]
    with torch.no_grad():
        ids = tok(chosen, max_length=16)
        text = model.encode_text(ids.input_ids, ids.attention_mask.bool())
        logits = model.logit_scale.exp().clamp(max=100) * model.encode_image(batch.images) @ text.T
    want = (torch.logsumexp(logits[:2], 1) - logits[[0, 1], [1, 0]]).mean()
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert logs["used"] == pytest.approx(2 / 3)
