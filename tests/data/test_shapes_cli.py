"""``vlp data synth`` writes a ShapesWorld folder; ``vlp data`` is a group of subcommands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlp.cli import main


def test_synth_writes_the_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "shapes"
    argv = ["data", "synth", "--out", str(out), "--images", "12", "--size", "24", "--seed", "9", "--shard-size", "5"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"wrote ShapesWorld to {out}" in printed and "images/s" in printed
    meta = json.loads((out / "meta.json").read_text())
    assert meta["seed"] == 9 and meta["image_size"] == 24 and sum(meta["counts"].values()) == 12
    assert len(list((out / "images").rglob("*.png"))) == 12 and len(list((out / "regions").glob("*.npz"))) == 12
    assert sorted(p.name for p in (out / "shards").glob("train-*.tar")) == ["train-00000.tar", "train-00001.tar"]
    for name in ("dataset_shapes.json", "captions_train.json", "instances_val.json", "refs(unc).p", "instances.json"):
        assert (out / "annotations" / name).is_file()
    assert (out / "annotations" / "v2_OpenEnded_shapes_test_questions.json").is_file()
    assert (out / "manifest_holdout.jsonl").is_file()
    # rerunning onto the same folder needs --overwrite, and then reproduces it exactly
    before = (out / "annotations" / "dataset_shapes.json").read_bytes()
    assert main(argv + ["--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(argv + ["--quiet", "--overwrite"]) == 0
    assert capsys.readouterr().out == ""
    assert (out / "annotations" / "dataset_shapes.json").read_bytes() == before


def test_synth_options_reach_the_generator(tmp_path: Path) -> None:
    out = tmp_path / "s"
    argv = ["data", "synth", "--out", str(out), "--images", "10", "--size", "16", "--quiet", "--formats", "coco,vqa"]
    argv += ["--holdout", "0", "--splits", "0.5,0.5,0", "--max-objects", "2", "--questions", "2", "--captions", "3"]
    assert main(argv) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["counts"] == {"train": 5, "val": 5, "test": 0, "holdout": 0}
    assert meta["formats"] == ["coco", "vqa"] and not (out / "shards").exists()
    coco = json.loads((out / "annotations" / "instances_train.json").read_text())
    per_image = [sum(a["image_id"] == im["id"] for a in coco["annotations"]) for im in coco["images"]]
    assert max(per_image) <= 2
    qs = json.loads((out / "annotations" / "v2_OpenEnded_shapes_val_questions.json").read_text())["questions"]
    assert len(qs) <= 10 and len(qs) >= 8


def test_data_group_and_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data"]) == 2
    assert "synth" in capsys.readouterr().out
    assert main(["data", "synth", "--out", str(tmp_path / "x"), "--formats", "coco,kitti"]) == 2
    err = capsys.readouterr().err
    assert "formats" in err and "kitti" in err
    with pytest.raises(SystemExit):
        main(["data", "synth", "--out", str(tmp_path / "y"), "--splits", "0.5,x"])
    assert "0.8,0.1,0.1" in capsys.readouterr().err
