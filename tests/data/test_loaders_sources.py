"""Every real format loads from tiny files written exactly as the real datasets ship them."""

from __future__ import annotations

import json
import pickle
import random
from collections import Counter

import numpy as np
import pytest
import torch
from loaders_helpers import dump, region_file, tiny_tokenizer, write_png

from vlp.config import ConfigError, from_dict
from vlp.data.config import DataConfig
from vlp.data.loader import build_dataset, build_loader, text_batches
from vlp.data.sources.refcoco import read_refcoco
from vlp.data.sources.regions import RegionError, load_regions
from vlp.data.sources.vqav2 import build_answer_vocab, soft_score
from vlp.metrics.vqa import vqa_accuracy


def _config(**data) -> DataConfig:
    data.setdefault("image_size", 16)
    return from_dict(DataConfig, data)


def _karpathy_coco(root) -> None:
    images = []
    for i, (split, folder) in enumerate([("train", "train2014"), ("restval", "val2014"), ("test", "val2014")]):
        name = f"COCO_{folder}_{i:012d}.jpg"
        write_png(root / folder / name)  # PNG bytes under a .jpg name: PIL goes by content, as it should
        sentences = [
            {"raw": f"Image {i} sentence {k}.", "tokens": ["image"], "imgid": i, "sentid": 3 * i + k} for k in range(3)
        ]
        images.append(
            {
                "filepath": folder,
                "filename": name,
                "imgid": i,
                "cocoid": 100 + i,
                "split": split,
                "sentids": [3 * i + k for k in range(3)],
                "sentences": sentences,
            }
        )
    dump(root / "dataset_coco.json", {"dataset": "coco", "images": images})


def test_karpathy_coco_train_takes_restval_and_test_is_per_image(tmp_path) -> None:
    _karpathy_coco(tmp_path)
    config = _config(type="karpathy", root=str(tmp_path), paths={"annotations": "dataset_coco.json"})
    train = build_dataset(config, "train")
    assert len(train) == 6 and {r["image_id"] for r in train.index.records} == {100, 101}
    assert [r["image_index"] for r in train.index.records] == [0, 0, 0, 1, 1, 1]
    test = build_dataset(config, "test")
    assert len(test) == 1 and test.texts == ["Image 2 sentence 0.", "Image 2 sentence 1.", "Image 2 sentence 2."]
    assert test.txt2img == [0, 0, 0] and test.img2txt == [[0, 1, 2]]
    assert test.index.records[0]["image"] == str(tmp_path / "val2014" / "COCO_val2014_000000000002.jpg")
    no_restval = _config(
        type="karpathy", root=str(tmp_path), paths={"annotations": "dataset_coco.json"}, options={"restval": False}
    )
    assert len(build_dataset(no_restval, "train")) == 3
    with pytest.raises(ConfigError, match="no images in split 'val'; the file has restval, test, train"):
        build_dataset(config, "val")


def test_karpathy_flickr_layout_has_no_filepath(tmp_path) -> None:
    write_png(tmp_path / "flickr30k-images" / "1000092795.jpg")
    sentences = [{"raw": "Two young guys.", "tokens": ["two"], "imgid": 0, "sentid": 0}]
    dump(
        tmp_path / "dataset_flickr30k.json",
        {
            "dataset": "flickr30k",
            "images": [
                {"filename": "1000092795.jpg", "imgid": 0, "split": "test", "sentids": [0], "sentences": sentences}
            ],
        },
    )
    config = _config(
        type="karpathy",
        root=str(tmp_path),
        paths={"annotations": "dataset_flickr30k.json", "images": "flickr30k-images"},
    )
    dataset = build_dataset(config, "test")
    assert dataset.index.records[0]["image_id"] == 0 and dataset.texts == ["Two young guys."]
    assert dataset[0]["image"].shape == (3, 16, 16)


def test_albef_train_and_eval_files(tmp_path) -> None:
    for i in range(2):
        write_png(tmp_path / "val2014" / f"COCO_val2014_{i:012d}.jpg")
    train = [
        {"caption": "A woman cutting a cake. ", "image": "val2014/COCO_val2014_000000000000.jpg", "image_id": "coco_0"},
        {"caption": "a cake being cut", "image": "val2014/COCO_val2014_000000000000.jpg", "image_id": "coco_0"},
        {"caption": "a dog", "image": "val2014/COCO_val2014_000000000001.jpg", "image_id": "coco_1"},
    ]
    test = [
        {"image": "val2014/COCO_val2014_000000000001.jpg", "caption": ["one", "two"]},
        {"image": "val2014/COCO_val2014_000000000000.jpg", "caption": ["three"]},
    ]
    dump(tmp_path / "coco_karpathy_train.json", train)
    dump(tmp_path / "coco_karpathy_test.json", test)
    config = _config(type="albef", root=str(tmp_path), paths={"annotations": "coco_karpathy_{split}.json"})
    pairs = build_dataset(config, "train")
    assert [(r["caption"], r["image_index"]) for r in pairs.index.records] == [
        ("A woman cutting a cake.", 0),
        ("a cake being cut", 0),
        ("a dog", 1),
    ]
    images = build_dataset(config, "test")
    assert images.texts == ["one", "two", "three"] and images.txt2img == [0, 0, 1] and images.img2txt == [[0, 1], [2]]
    batches = list(text_batches(images, tiny_tokenizer(), batch_size=2))
    assert [b.image_index.tolist() for b in batches] == [[0, 0], [1]]
    assert batches[0].input_ids.shape[0] == 2


def _vqa_files(root, split="train2014", answers_per_q=None) -> None:
    answers_per_q = answers_per_q or {
        1: ["yes"] * 10,
        2: ["2"] * 4 + ["two"] * 2 + ["3"] * 3 + ["4"],  # "two" normalizes to "2": 6 x "2"
        3: ["red"] * 2 + ["blue"] + ["green"] * 7,
    }
    questions = [{"image_id": 9, "question": f"question {q}?", "question_id": q} for q in answers_per_q]
    dump(
        root / f"v2_OpenEnded_mscoco_{split}_questions.json",
        {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "data_subtype": split, "questions": questions},
    )
    annotations = [
        {
            "question_id": q,
            "image_id": 9,
            "question_type": "what",
            "answer_type": "other",
            "multiple_choice_answer": Counter(a).most_common(1)[0][0],
            "answers": [{"answer": x, "answer_confidence": "yes", "answer_id": k + 1} for k, x in enumerate(a)],
        }
        for q, a in answers_per_q.items()
    ]
    dump(root / f"v2_mscoco_{split}_annotations.json", {"data_subtype": split, "annotations": annotations})
    write_png(root / split / f"COCO_{split}_000000000009.jpg")


def test_soft_score_matches_the_official_vqa_accuracy() -> None:
    assert [round(soft_score(c), 10) for c in range(6)] == [0.0, 0.3, 0.6, 0.9, 1.0, 1.0]
    assert [soft_score(c, method="min3") for c in (1, 2, 3)] == [1 / 3, 2 / 3, 1.0]
    rng = random.Random(0)
    for _ in range(50):  # the target is the expected score of predicting that answer under the official metric
        answers = [rng.choice(["cat", "dog", "red"]) for _ in range(10)]
        for candidate in ("cat", "dog", "red"):
            assert soft_score(answers.count(candidate)) == pytest.approx(vqa_accuracy(candidate, answers))


def test_vqav2_questions_answers_vocab_and_targets(tmp_path) -> None:
    _vqa_files(tmp_path)
    paths = {
        "questions": "v2_OpenEnded_mscoco_{split}_questions.json",
        "annotations": "v2_mscoco_{split}_annotations.json",
        "images": "{split}",
    }
    config = _config(type="vqav2", root=str(tmp_path), paths=paths, options={"top_k": 3})
    dataset = build_dataset(config, "train2014", train=True)
    vocab = json.loads((tmp_path / "answer_vocab.json").read_text())["answers"]
    assert vocab == ["2", "green", "yes"]  # each is the multiple-choice answer once: ties go alphabetically
    record = dataset.index.records[1]
    assert record["image"] == str(tmp_path / "train2014" / "COCO_train2014_000000000009.jpg")
    assert record["answers"].count("2") == 6
    assert record["targets"] == {vocab.index("2"): 1.0}  # 6 annotators; "3" and "4" are not in the vocabulary
    assert dataset.index.records[2]["targets"] == {vocab.index("green"): 1.0}
    loader = build_loader(config, "train2014", tiny_tokenizer(), batch_size=3, train=False)
    batch = next(iter(loader))
    assert batch.answer_targets.shape == (3, 3) and batch.images.shape == (3, 3, 16, 16)
    assert batch.answer_targets[1].tolist() == [1.0, 0.0, 0.0] and batch.meta[1]["question_id"] == 2
    # the saved vocabulary is reused for another split; test splits have no annotations
    _vqa_files(tmp_path, "test2015")
    (tmp_path / "v2_mscoco_test2015_annotations.json").unlink()
    test = build_dataset(
        _config(type="vqav2", root=str(tmp_path), paths={k: v for k, v in paths.items() if k != "annotations"}),
        "test2015",
    )
    assert "targets" not in test.index.records[0] and len(test) == 3


def test_vqav2_vocab_ranks_by_frequency() -> None:
    annotations = [{"multiple_choice_answer": a} for a in ["no", "Yes", "yes", "two", "2", "2", "cat"]]
    assert build_answer_vocab(annotations, top_k=2, normalize=lambda s: s.lower()) == ["2", "yes"]
    from vlp.metrics.vqa import normalize_answer

    assert build_answer_vocab(annotations, top_k=3, normalize=normalize_answer) == ["2", "yes", "cat"]


def test_vqav2_without_vocabulary_source_is_a_clear_error(tmp_path) -> None:
    _vqa_files(tmp_path, "val2014")
    config = _config(
        type="vqav2",
        root=str(tmp_path),
        options={"answer_vocab": "missing.json"},
        paths={
            "questions": "v2_OpenEnded_mscoco_{split}_questions.json",
            "annotations": "v2_mscoco_{split}_annotations.json",
            "images": "{split}",
        },
    )
    with pytest.raises(ConfigError, match="no answer vocabulary.*train_annotations"):
        build_dataset(config, "val2014")


def _refcoco_files(root) -> None:
    # image 581857: two people; the ref points at annotation 1719310 (the red one on the left)
    from PIL import Image

    image = Image.new("RGB", (64, 32), (0, 0, 0))
    image.paste((255, 0, 0), (4, 8, 20, 28))
    image.paste((0, 0, 255), (40, 4, 60, 30))
    (root / "train2014").mkdir()
    image.save(root / "train2014" / "COCO_train2014_000000581857.jpg", "PNG")
    instances = {
        "images": [{"id": 581857, "file_name": "COCO_train2014_000000581857.jpg", "width": 64, "height": 32}],
        "annotations": [
            {"id": 1719310, "image_id": 581857, "category_id": 1, "bbox": [4, 8, 16, 20], "area": 320, "iscrowd": 0},
            {"id": 1719311, "image_id": 581857, "category_id": 1, "bbox": [40, 4, 20, 26], "area": 520, "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "person", "supercategory": "person"}],
    }
    dump(root / "refcoco" / "instances.json", instances)
    refs = [
        {
            "sent_ids": [0, 1],
            "file_name": "COCO_train2014_000000581857_16.jpg",
            "ann_id": 1719310,
            "ref_id": 0,
            "image_id": 581857,
            "split": "testA",
            "category_id": 1,
            "sentences": [
                {"tokens": ["left", "guy"], "raw": "Left guy", "sent_id": 0, "sent": "left guy"},
                {"tokens": ["red"], "raw": "red", "sent_id": 1, "sent": "red"},
            ],
        },
        {
            "sent_ids": [2],
            "file_name": "x.jpg",
            "ann_id": 1719311,
            "ref_id": 1,
            "image_id": 581857,
            "split": "train",
            "category_id": 1,
            "sentences": [{"tokens": [], "raw": "", "sent_id": 2, "sent": ""}],
        },
    ]
    (root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))


def test_refcoco_refs_and_target_boxes(tmp_path) -> None:
    _refcoco_files(tmp_path)
    config = _config(
        type="refcoco",
        root=str(tmp_path),
        paths={"refs": "refcoco/refs(unc).p", "instances": "refcoco/instances.json", "images": "train2014"},
        transform={"eval_crop": "resize", "mean": [0, 0, 0], "std": [1, 1, 1]},
    )
    dataset = build_dataset(config, "testA")
    assert [r["caption"] for r in dataset.index.records] == ["left guy", "red"]
    assert dataset.index.records[0]["target_box"] == [4.0, 8.0, 20.0, 28.0]
    assert dataset.index.records[0]["target_index"] == 0
    batch = next(iter(build_loader(config, "testA", tiny_tokenizer(), batch_size=2)))
    torch.testing.assert_close(batch.target_boxes[0], torch.tensor([4 / 64, 8 / 32, 20 / 64, 28 / 32]))
    # the box lands on the red pixels of the resized image
    red = (batch.images[0, 0] > 0.5) & (batch.images[0, 2] < 0.5)
    ys, xs = torch.nonzero(red, as_tuple=True)
    extent = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) / 16
    torch.testing.assert_close(extent, batch.target_boxes[0], atol=1.5 / 16, rtol=0)
    assert batch.region_mask.tolist() == [[True, True], [True, True]]  # both people are candidates
    # the train ref has only an empty sentence: skipped and counted; a split with nothing left is an error
    train = read_refcoco(tmp_path / "refcoco/refs(unc).p", tmp_path / "refcoco/instances.json", tmp_path, "train")
    assert train.records == [] and [s.reason for s in train.skips] == ["empty_caption"]
    with pytest.raises(ConfigError, match="no usable samples"):
        build_dataset(config, "train")


def test_coco_instances_labels_tags_and_crowd(tmp_path) -> None:
    write_png(tmp_path / "val2017" / "000000000139.jpg", (40, 20))
    dump(
        tmp_path / "instances_val2017.json",
        {
            "images": [{"id": 139, "file_name": "000000000139.jpg", "width": 40, "height": 20}],
            "annotations": [
                {"id": 1, "image_id": 139, "category_id": 90, "bbox": [0, 0, 10, 10], "iscrowd": 0, "area": 100},
                {"id": 2, "image_id": 139, "category_id": 3, "bbox": [10, 5, 20, 10], "iscrowd": 0, "area": 200},
                {"id": 3, "image_id": 139, "category_id": 1, "bbox": [0, 0, 40, 20], "iscrowd": 1, "area": 800},
                {"id": 4, "image_id": 139, "category_id": 1, "bbox": [5, 5, 0, 3], "iscrowd": 0, "area": 0},
            ],
            "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 90, "name": "toothbrush"}],
        },
    )
    config = _config(
        type="coco_instances", root=str(tmp_path), paths={"instances": "instances_{split}.json", "images": "{split}"}
    )
    dataset = build_dataset(config, "val2017")
    record = dataset.index.records[0]
    assert record["labels"] == [2, 1] and record["tags"] == ["toothbrush", "car"]  # crowd and empty boxes left out
    assert record["boxes"] == [[0.0, 0.0, 10.0, 10.0], [10.0, 5.0, 30.0, 15.0]]
    sample = dataset[0]
    torch.testing.assert_close(sample["region_boxes"], torch.tensor([[0, 0, 0.25, 0.5], [0.25, 0.25, 0.75, 0.75]]))


def test_region_files_aliases_and_refusals(tmp_path) -> None:
    path = tmp_path / "x.npz"
    np.savez(
        path,
        x=np.ones((2, 3), np.float32),
        bbox=np.array([[0, 0, 50, 20], [10, 10, 100, 40]], np.float32),
        num_bbox=2,
        image_w=100,
        image_h=40,
        cls_prob=np.full((2, 5), 0.2, np.float32),
    )
    regions = load_regions(path)
    np.testing.assert_allclose(regions["boxes"], [[0, 0, 0.5, 0.5], [0.1, 0.25, 1.0, 1.0]])
    assert regions["class_probs"].shape == (2, 5) and load_regions(path, max_regions=1)["features"].shape == (1, 3)
    # an unused object array (an extraction script's "info" dict) is never touched ...
    extra = tmp_path / "info.npz"
    np.savez(
        extra,
        features=np.ones((1, 3)),
        boxes=np.zeros((1, 4)),
        image_w=1,
        image_h=1,
        info=np.array([{"objects": 1}], dtype=object),
    )
    assert load_regions(extra)["features"].shape == (1, 3)
    # ... and one we need is refused rather than unpickled
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, features=np.array([[{"x": 1}]], dtype=object), boxes=np.zeros((1, 4)), image_w=1, image_h=1)
    with pytest.raises(RegionError, match="pickle") as info:
        load_regions(pickled)
    assert info.value.reason == "bad_regions"
    region_file(tmp_path / "bad.npz", [[0, 0, 1, 1]], 10, 10, num_boxes=np.int64(3))
    with pytest.raises(RegionError, match="num_boxes=3"):
        load_regions(tmp_path / "bad.npz")
    with pytest.raises(RegionError) as info:
        load_regions(tmp_path / "none.npz")
    assert info.value.reason == "missing_file"


def test_manifest_csv_with_regions_and_tags(tmp_path) -> None:
    for i in range(2):
        write_png(tmp_path / "img" / f"{i}.png", (20, 10))
        region_file(
            tmp_path / "feats" / f"{i}.npz",
            [[0, 0, 10, 10]] * (i + 1),
            20,
            10,
            dim=4,
            objects_id=np.array([1, 0][: i + 1]),
        )
    (tmp_path / "train.csv").write_text('image,caption,image_id\n0.png,"a cat, sitting",0\n1.png,a dog,1\n')
    (tmp_path / "names.txt").write_text("dog\ncat\n")
    config = _config(
        type="manifest",
        root=str(tmp_path),
        paths={"manifest": "train.csv", "images": "img", "regions": "feats"},
        options={"tag_names": "names.txt"},
    )
    batch = next(iter(build_loader(config, "train", tiny_tokenizer(), batch_size=2, shuffle=False, drop_last=False)))
    assert [m["text"] for m in batch.meta] == ["a cat, sitting", "a dog"]
    assert batch.region_features.shape == (2, 2, 4) and batch.region_mask.tolist() == [[True, False], [True, True]]
    assert batch.region_features[1, :, 0].tolist() == [1.0, 2.0]  # row r of the file holds r + 1
    assert [m["tags"] for m in batch.meta] == [["cat"], ["cat", "dog"]]
    with pytest.raises(ConfigError, match="data.paths.bogus: unknown path for type 'manifest'"):
        build_dataset(_config(type="manifest", root=str(tmp_path), paths={"bogus": "x"}), "train")
    with pytest.raises(ConfigError, match="data.options.nope: unknown key"):
        build_dataset(_config(type="manifest", root=str(tmp_path), options={"nope": 1}), "train")
