"""Work the demo does once and shares: the zero-shot heat maps scored at every threshold from one pass of the
model must equal each threshold's score recomputed image by image through the predict path
(:func:`vlp.tasks.perception.heatmap`), which loads, preprocesses and embeds every image on its own."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vlp.demo.config import DEMO_RECIPE
from vlp.demo.steps import HEAT_KS, shapes_data
from vlp.demo.training import model_recipe, pretrain, train_shapes_tokenizer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from vlp.data.shapesworld import generate

    root = tmp_path_factory.mktemp("shared")
    world = root / "world"
    generate(world, images=80, size=32, seed=0, formats=("albef", "coco"), workers=1)
    tokenizer = train_shapes_tokenizer(world, root / "tokenizer", 200)
    recipe = model_recipe(DEMO_RECIPE, world, tokenizer, {
        "train.steps": 3, "train.batch_size": 8, "schedule.warmup_steps": 1, "train.log_every": 1,
        "objectives.itm.swap_words": [["circle", "square", "star"]],
    })  # fmt: skip
    model, _ = pretrain(recipe, tokenizer, root / "pretrain")
    return world, model, tokenizer


def _by_hand(model, tokenizer, world: Path, split: str, k: float) -> dict[str, float]:
    """Accuracy, mIoU and pointing of one threshold, one image and one query at a time."""
    import numpy as np

    from vlp.metrics.boxes import elementwise_box_iou
    from vlp.tasks.common import build_eval_dataset
    from vlp.tasks.perception import heat_box, heatmap, unique_queries

    dataset = build_eval_dataset(shapes_data(model, "instances"), split, tokenizer)
    categories = dataset.index.extras["categories"]
    boxes, targets, hits = [], [], []
    for record in dataset.index.records:
        for query, target in unique_queries(record, categories):
            heat = heatmap(model, tokenizer, record["image"], query, templates="shapes")
            boxes.append(list(heat_box(heat, "std", k)[0]))
            targets.append(target)
            y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
            hits.append(target[0] <= x + 0.5 <= target[2] and target[1] <= y + 0.5 <= target[3])
    iou = elementwise_box_iou(torch.tensor(boxes, dtype=torch.float64), torch.tensor(targets, dtype=torch.float64))
    return {
        "accuracy": 100 * (iou >= 0.5).double().mean().item(),
        "miou": 100 * iou.mean().item(),
        "pointing": 100 * sum(hits) / len(hits),
        "n_queries": len(hits),
    }


def test_heat_maps_scored_at_every_threshold_at_once_equal_each_threshold_by_hand(tiny):
    from vlp.tasks.perception import evaluate, evaluate_thresholds

    world, model, tokenizer = tiny
    data = shapes_data(model, "instances")
    shared = evaluate_thresholds(model, tokenizer, data, split="val", templates="shapes", threshold="std", ks=HEAT_KS)
    assert len(shared) == len(HEAT_KS)
    for k, metrics in zip(HEAT_KS, shared):
        expected = _by_hand(model, tokenizer, world, "val", k)
        for key, value in expected.items():
            assert metrics[key] == pytest.approx(value, abs=1e-6), (k, key)
        # one threshold through evaluate() is the same number
        single = evaluate(model, tokenizer, data, split="val", templates="shapes", threshold="std", k=k)
        assert single["accuracy"] == metrics["accuracy"] and single["miou"] == metrics["miou"]
    # the thresholds do differ here, so the test would see boxes of the wrong k
    assert len({round(m["miou"], 9) for m in shared}) > 1


def test_no_threshold_is_an_error(tiny):
    from vlp.config import ConfigError
    from vlp.tasks.perception import evaluate_thresholds

    _, model, tokenizer = tiny
    with pytest.raises(ConfigError, match="ks is empty"):
        evaluate_thresholds(model, tokenizer, shapes_data(model, "instances"), split="val", ks=())
