"""Image folders with one sub-folder per class (ImageFolder / clip_benchmark layout, and ImageNet's train/ val/
split folders): classes, labels, seeded splits, class-name files, recognition by ``--data FOLDER``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlp.config import ConfigError
from vlp.data.config import DataConfig
from vlp.data.detect import detect_data
from vlp.data.loader import build_dataset
from vlp.data.sources.image_folder import read_class_names, read_image_folder


def touch(root: Path, rel: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def one_folder(root: Path) -> Path:
    # classes sort as: "Zebra" < "ant" < "bee" (ImageFolder sorts by code point)
    for i in range(10):
        touch(root, f"ant/{i:02d}.jpg")
    for i in range(5):
        touch(root, f"bee/nested/{i}.PNG")  # below a sub-folder and upper case: still an image of class bee
    touch(root, "Zebra/z.webp")
    touch(root, "ant/notes.txt")  # not an image
    touch(root, "ant/.hidden.jpg")  # hidden
    return root


def test_one_folder_classes_labels_and_all_split(tmp_path):
    root = one_folder(tmp_path)
    index = read_image_folder(root, "all")
    assert index.extras["classes"] == index.extras["class_folders"] == ["Zebra", "ant", "bee"]
    labels = {r["image_id"]: r["label"] for r in index.records}
    assert len(labels) == 16
    assert labels["Zebra/z.webp"] == 0 and labels["ant/03.jpg"] == 1 and labels["bee/nested/4.PNG"] == 2
    assert "ant/notes.txt" not in labels and "ant/.hidden.jpg" not in labels
    assert all(Path(r["image"]).is_absolute() for r in index.records)
    assert index.extras["split_source"] == "every image of the folder"


def test_one_folder_seeded_split_is_disjoint_stratified_and_reproducible(tmp_path):
    root = one_folder(tmp_path)
    train = read_image_folder(root, "train", test_fraction=0.3, seed=1)
    test = read_image_folder(root, "test", test_fraction=0.3, seed=1)
    train_ids = {r["image_id"] for r in train.records}
    test_ids = {r["image_id"] for r in test.records}
    assert not train_ids & test_ids and len(train_ids | test_ids) == 16
    per_class = {c: sum(r["label"] == c for r in test.records) for c in range(3)}
    # round(10 * .3) = 3 ants, round(5 * .3) = 2 bees, a class of one image stays in train
    assert per_class == {0: 0, 1: 3, 2: 2}
    assert test_ids == {r["image_id"] for r in read_image_folder(root, "test", test_fraction=0.3, seed=1).records}
    other = {r["image_id"] for r in read_image_folder(root, "test", test_fraction=0.3, seed=2).records}
    assert other != test_ids  # another seed draws another split (10 choose 3 * 5 choose 2 ways)
    assert "seeded test part" in test.extras["split_source"] and "seed 1" in test.extras["split_source"]
    with pytest.raises(ConfigError, match=r"split 'val' does not exist in one folder.*train / test"):
        read_image_folder(root, "val")
    with pytest.raises(ConfigError, match=r"test_fraction: must lie in \(0, 1\), got 1.0"):
        read_image_folder(root, "test", test_fraction=1.0)


def test_imagenet_layout_reads_split_folders_and_numbers_classes_alike(tmp_path):
    for rel in ("train/cat/1.jpg", "train/cat/2.jpg", "train/dog/1.jpg", "val/dog/3.jpg", "val/emu/4.jpg"):
        touch(tmp_path, rel)
    train = read_image_folder(tmp_path, "train")
    val = read_image_folder(tmp_path, "val")
    assert train.extras["classes"] == val.extras["classes"] == ["cat", "dog", "emu"]  # union over the splits
    assert sorted((r["image_id"], r["label"]) for r in val.records) == [("val/dog/3.jpg", 1), ("val/emu/4.jpg", 2)]
    test = read_image_folder(tmp_path, "test")  # no test/: ImageNet evaluates on val/
    assert [r["image_id"] for r in test.records] == [r["image_id"] for r in val.records]
    assert test.extras["split_source"] == "the val/ folder (there is no test/ folder)"
    assert len(read_image_folder(tmp_path, "all").records) == 5
    with pytest.raises(ConfigError, match=r"no split 'holdout'; the split folders are train, val \(and 'all'\)"):
        read_image_folder(tmp_path, "holdout")


def test_class_names_from_lines_json_list_or_mapping(tmp_path):
    folders = ["n01", "n02", "n03"]
    (tmp_path / "names.txt").write_text("tench\n\ngoldfish\ngreat white shark\n")
    assert read_class_names(tmp_path / "names.txt", folders) == ["tench", "goldfish", "great white shark"]
    (tmp_path / "names.json").write_text(json.dumps(["a", "b", "c"]))
    assert read_class_names(tmp_path / "names.json", folders) == ["a", "b", "c"]
    (tmp_path / "map.json").write_text(json.dumps({"n03": "shark", "n01": "tench", "n02": "goldfish"}))
    assert read_class_names(tmp_path / "map.json", folders) == ["tench", "goldfish", "shark"]
    (tmp_path / "short.txt").write_text("tench\ngoldfish\n")
    with pytest.raises(ConfigError, match=r"short.txt: 2 names for 3 class folders \(n01, n02, n03\)"):
        read_class_names(tmp_path / "short.txt", folders)
    (tmp_path / "partial.json").write_text(json.dumps({"n01": "tench", "n09": "x"}))
    with pytest.raises(ConfigError, match=r"partial.json.*missing: \['n02', 'n03'\], not a class folder: \['n09'\]"):
        read_class_names(tmp_path / "partial.json", folders)
    with pytest.raises(ConfigError, match="missing.txt: file not found"):
        read_class_names(tmp_path / "missing.txt", folders)


def test_the_loader_type_and_recognition_by_data_folder(tmp_path):
    root = one_folder(tmp_path / "one")
    found = detect_data(root, wants=("coco_instances", "image_folder"))
    assert found.type == "image_folder" and found.root == str(root)
    (tmp_path / "names.txt").write_text("zebra\nant\nbee\n")
    config = DataConfig(type="image_folder", root=str(root), image_size=16,
                        options={"class_names": str(tmp_path / "names.txt")})  # fmt: skip
    dataset = build_dataset(config, "all")
    assert len(dataset) == 16 and dataset.index.extras["classes"] == ["zebra", "ant", "bee"]
    for rel in ("train/cat/1.jpg", "train/dog/1.jpg", "val/cat/2.jpg", "val/dog/2.jpg"):
        touch(tmp_path / "imagenet", rel)
    found = detect_data(tmp_path / "imagenet")
    assert found.type == "image_folder" and "train/, val/ of 2 class folders: cat, dog" in found.evidence[0]
