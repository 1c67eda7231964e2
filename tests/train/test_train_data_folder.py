"""``vlp pretrain/finetune --data FOLDER``: the folder's format is recognised and trained on."""

from __future__ import annotations

import json
import shutil

import pytest

from vlp.cli import main
from vlp.config import ConfigError
from vlp.recipe import recipe_dict
from vlp.train.launch import with_data_folder


def karpathy_folder(shapes, tmp_path):
    """Only a Karpathy-format caption file and its images: no ShapesWorld meta.json, nothing to say what it is."""
    folder = tmp_path / "coco-like"
    shutil.copytree(shapes / "data" / "images", folder / "images")
    (folder / "annotations").mkdir()
    images, sentid = [], 0
    for split in ("train", "val"):
        for record in json.loads((shapes / "data" / "annotations" / f"captions_{split}.json").read_text()):
            captions = record["caption"] if isinstance(record["caption"], list) else [record["caption"]]
            sentences = [{"raw": c, "tokens": c.lower().split(), "sentid": sentid + i} for i, c in enumerate(captions)]
            sentid += len(captions)
            folder_name, file_name = record["image"].rsplit("/", 1)
            images.append({"filepath": folder_name, "filename": file_name, "split": split, "sentences": sentences})
    (folder / "annotations" / "dataset_coco.json").write_text(json.dumps({"images": images}))
    return folder


def test_the_recipe_reads_the_recognised_folder(shapes, tmp_path, capsys):
    folder = karpathy_folder(shapes, tmp_path)
    recipe = with_data_folder(recipe_dict("clip-tiny"), str(folder), "captions")
    data = recipe["data"]
    assert (data["type"], data["root"], data["paths"]) == (
        "karpathy",
        str(folder),
        {"annotations": "annotations/dataset_coco.json"},
    )
    assert data["image_size"] == 32 and data["options"] == {}  # sizes kept; shapesworld options dropped
    assert "read as karpathy (annotations/dataset_coco.json)" in capsys.readouterr().out
    assert with_data_folder(recipe_dict("clip-tiny"), None, "captions") == recipe_dict("clip-tiny")
    with pytest.raises(ConfigError, match=r"found nothing of the kinds this command reads \(vqav2\)"):
        with_data_folder(recipe_dict("clip-tiny"), str(folder), "vqa")


def test_pretrain_on_a_recognised_folder(shapes, tmp_path, capsys):
    folder = karpathy_folder(shapes, tmp_path)
    out = tmp_path / "run"
    args = ["pretrain", "clip-tiny", "--data", str(folder), "--out", str(out), "--steps", "2", "--tokenizer",
            str(shapes / "tok"), "--set", "train.batch_size=4", "--set", "train.num_workers=0"]  # fmt: skip
    assert main(args) == 0
    saved = (out / "recipe.yaml").read_text()
    assert "type: karpathy" in saved and str(folder) in saved
    assert "read as karpathy" in capsys.readouterr().out
