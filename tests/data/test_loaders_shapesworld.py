"""Integration: a generated ShapesWorld folder loads in every format with the real-format loaders."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from loaders_helpers import tiny_tokenizer

from vlp.config import from_dict
from vlp.data.config import DataConfig
from vlp.data.loader import build_dataset, build_loader

shapesworld = pytest.importorskip("vlp.data.shapesworld")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    shapesworld.generate(root, images=40, size=32, seed=3, shard_size=8, workers=1)
    return root


def _config(root, fmt: str, **options) -> DataConfig:
    return from_dict(DataConfig, {"type": "shapesworld", "root": str(root), "image_size": 32,
                                  "options": {"format": fmt} | options})  # fmt: skip


def _all(loader) -> list:
    return [b for b in loader]


def test_caption_formats_agree(world) -> None:
    meta = json.loads((world / "meta.json").read_text())
    per_image = meta["options"]["captions_per_image"]
    texts = {}
    for fmt in ("captions", "karpathy", "manifest"):
        train = build_dataset(_config(world, fmt), "train")
        assert len(train) == meta["counts"]["train"] * per_image
        val = build_dataset(_config(world, fmt), "val")
        assert len(val) == meta["counts"]["val"] and len(val.texts) == meta["counts"]["val"] * per_image
        assert val.img2txt[1] == [per_image + k for k in range(per_image)]
        texts[fmt] = sorted(val.texts)
    assert texts["captions"] == texts["karpathy"] == texts["manifest"]
    batches = _all(build_loader(_config(world, "manifest"), "train", tiny_tokenizer(), batch_size=16))
    assert all(b.images.shape == (16, 3, 32, 32) and b.input_ids.shape[0] == 16 for b in batches)
    assert all(b.tag_ids is not None for b in batches)  # the manifest lists object tags


@pytest.mark.slow  # DataLoader worker processes
def test_vqa_refcoco_instances_webdataset_and_regions(world) -> None:
    meta = json.loads((world / "meta.json").read_text())
    questions = json.loads((world / "annotations/v2_OpenEnded_shapes_val_questions.json").read_text())["questions"]
    vqa = _all(build_loader(_config(world, "vqa"), "val", tiny_tokenizer(), batch_size=64))
    assert sum(len(b) for b in vqa) == len(questions)
    best = [int(t.argmax()) for b in vqa for t in b.answer_targets]
    vocab = json.loads((world / "annotations/answer_vocab.json").read_text())["answers"]
    annotations = json.loads((world / "annotations/v2_shapes_val_annotations.json").read_text())["annotations"]
    by_id = {a["question_id"]: a["multiple_choice_answer"] for a in annotations}
    ids = [m["question_id"] for b in vqa for m in b.meta]
    hits = [vocab[k] == by_id[q] for k, q in zip(best, ids) if by_id[q] in vocab]
    assert hits and all(hits)  # without annotator noise the top target is the multiple-choice answer

    refs = [r for r in pickle.loads((world / "annotations/refs(unc).p").read_bytes()) if r["split"] == "val"]
    ref_batches = _all(build_loader(_config(world, "refcoco"), "val", tiny_tokenizer(), batch_size=64))
    assert sum(len(b) for b in ref_batches) == sum(len(r["sentences"]) for r in refs)
    boxes = torch.cat([b.target_boxes for b in ref_batches])
    assert bool(((boxes[:, 2:] > boxes[:, :2]) & (boxes >= 0).all(1, keepdim=True)).all())

    instances = build_loader(_config(world, "instances", regions=True), "val", tiny_tokenizer(), batch_size=64)
    batch = next(iter(instances))
    assert len(batch) == meta["counts"]["val"] and batch.region_features.shape[-1] == meta["region_feature_dim"]
    # the oracle detector's boxes are the annotated objects
    gt = build_dataset(_config(world, "instances"), "val")
    gt_boxes = [gt[i]["region_boxes"] for i in range(len(gt))]
    for i, target in enumerate(gt_boxes):
        found = batch.region_boxes[i][batch.region_mask[i]]
        assert found.shape == target.shape
        torch.testing.assert_close(found.sort(0).values, target.sort(0).values, atol=2 / 32, rtol=0)
    assert all(set(m["tags"]) <= set(meta["shapes"]) for m in batch.meta)

    stream = build_loader(_config(world, "webdataset"), "train", tiny_tokenizer(), batch_size=8, num_workers=2)
    seen = [m["image_id"] for b in stream for m in b.meta]
    assert len(seen) == (meta["counts"]["train"] // 8) * 8 and len(set(seen)) == len(seen)
