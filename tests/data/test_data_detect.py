"""``--data FOLDER``: what is in a folder is recognised from real datasets' file layouts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlp.config import ConfigError
from vlp.data.detect import detect_data, find_candidates, split_template


def touch(root: Path, rel: str, text: str = "{}") -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_split_words_become_templates():
    assert split_template("captions_val.json") == "captions_{split}.json"
    assert (
        split_template("v2_OpenEnded_mscoco_train2014_questions.json")
        == "v2_OpenEnded_mscoco_{split}2014_questions.json"
    )
    assert split_template("dataset_coco.json") is None
    assert split_template("contest.jsonl") is None  # "test" inside a word is no split


def test_karpathy_coco_layout(tmp_path):
    touch(tmp_path, "annotations/dataset_coco.json", '{"images": []}')
    (tmp_path / "val2014").mkdir()
    found = detect_data(tmp_path)
    assert found.type == "karpathy" and found.paths == {"annotations": "annotations/dataset_coco.json"}


def test_vqav2_official_names_fill_every_path(tmp_path):
    for split in ("train", "val"):
        touch(tmp_path, f"v2_OpenEnded_mscoco_{split}2014_questions.json")
        touch(tmp_path, f"v2_mscoco_{split}2014_annotations.json")
    found = detect_data(tmp_path, wants=("vqav2",))
    assert found.paths == {
        "questions": "v2_OpenEnded_mscoco_{split}2014_questions.json",
        "annotations": "v2_mscoco_{split}2014_annotations.json",
        "train_annotations": "v2_mscoco_train2014_annotations.json",
    }


def test_refcoco_needs_its_instances(tmp_path):
    touch(tmp_path, "refcoco/refs(unc).p", "")
    assert find_candidates(tmp_path) == []
    touch(tmp_path, "refs(google).p", "")
    touch(tmp_path, "instances.json")
    found = detect_data(tmp_path)
    assert (found.type, found.paths) == ("refcoco", {"refs": "refs(google).p", "instances": "instances.json"})


def test_manifest_shards_and_caption_lists(tmp_path):
    touch(tmp_path, "train.csv", "filepath\ttitle\n")
    touch(tmp_path, "val.csv", "filepath\ttitle\n")
    assert detect_data(tmp_path).paths == {"manifest": "{split}.csv"}
    shards = tmp_path / "laion"
    for name in ("train-00000.tar", "train-00001.tar", "val-00000.tar"):
        touch(shards, f"shards/{name}", "")
    assert detect_data(shards).paths == {"shards": "shards/{split}-*.tar"}
    albef = tmp_path / "albef"
    touch(albef, "coco_karpathy_train.json", json.dumps([{"image": "a.jpg", "caption": "a dog"}]))
    touch(albef, "vg_qa.json", json.dumps([{"question": "what?", "answer": ["x"]}]))  # a list, but no captions
    found = detect_data(albef)
    assert (found.type, found.paths) == ("albef", {"annotations": "coco_karpathy_{split}.json"})


def test_an_image_folder_with_class_subfolders(tmp_path):
    for name in ("cat", "dog"):
        touch(tmp_path, f"{name}/1.jpg", "")
    found = detect_data(tmp_path)
    assert found.type == "image_folder" and "cat, dog" in found.evidence[0]


def test_shapesworld_is_taken_whole(tmp_path):
    touch(tmp_path, "meta.json", json.dumps({"name": "shapesworld"}))
    touch(tmp_path, "annotations/dataset_shapes.json")
    assert detect_data(tmp_path, wants=("vqav2",)).type == "shapesworld"


def test_nothing_or_several_fail_naming_what_was_found(tmp_path):
    with pytest.raises(ConfigError, match="found nothing.*no dataset file"):
        detect_data(tmp_path)
    touch(tmp_path, "annotations/dataset_flickr30k.json")
    touch(tmp_path, "annotations/instances_val2017.json")
    with pytest.raises(ConfigError, match=r"several readings.*karpathy.*coco_instances.*--format"):
        detect_data(tmp_path)
    assert detect_data(tmp_path, wants=("karpathy", "albef")).type == "karpathy"
    with pytest.raises(ConfigError, match=r"found nothing of the kinds this command reads \(vqav2\); found: karpathy"):
        detect_data(tmp_path, wants=("vqav2",))
    with pytest.raises(ConfigError, match="is not a folder"):
        detect_data(tmp_path / "missing")
