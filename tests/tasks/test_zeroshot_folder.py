"""``vlp eval zeroshot`` and ``vlp eval probe`` on an image folder with one sub-folder per class: the
numbers equal a recomputation image by image and prompt by prompt, class names come from the folders
or a file, the confusion matrix is written (JSON and PNG), and the probe says which images each split holds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vlp
from vlp.cli import main
from vlp.io.folders import load_model
from vlp.tasks.common import model_data_config, preprocess_images
from vlp.tasks.zeroshot import TEMPLATE_SETS
from vlp.text import Tokenizer

COLORS = {"blue": (20, 40, 220), "green": (30, 200, 40), "red": (220, 30, 30)}  # sorted folder order
NAMES = ["navy thing", "grass thing", "fire thing"]


def write_images(folder: Path, count: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for name, rgb in COLORS.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = np.clip(np.array(rgb) + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / name / f"{i}.png")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("folder-zeroshot")
    words = [t.format(n) for t in TEMPLATE_SETS["clip7"] + TEMPLATE_SETS["photo"] for n in [*COLORS, *NAMES]]
    tok = Tokenizer.train(words * 2, vocab_size=150)
    torch.manual_seed(0)
    return vlp.save_pretrained(vlp.create_model("clip-tiny"), root / "clip", tokenizer=tok)


def reference(model_dir: Path, images: list[tuple[str, int]], names: list[str], templates: list[str]):
    """Logits of every image against every class, one image and one prompt at a time."""
    loaded = load_model(model_dir)
    model, tok = loaded.model, loaded.tokenizer
    config = model_data_config(model)
    with torch.no_grad():
        classes = []
        for name in names:
            rows = [model.encode_text(tok([t.format(name)], max_length=config.max_text_len).input_ids)[0]
                    for t in templates]  # fmt: skip
            mean = torch.stack([r / r.norm() for r in rows]).mean(0)
            classes.append(mean / mean.norm())
        feats = torch.cat([model.encode_image(preprocess_images([path], config)) for path, _ in images])
    return feats @ torch.stack(classes).T


def test_zeroshot_on_one_folder_equals_a_recomputation(model_dir, tmp_path):
    data = tmp_path / "photos"
    write_images(data, 4, seed=0)
    (tmp_path / "names.json").write_text(json.dumps(dict(zip(COLORS, NAMES))))  # folder -> name
    out = tmp_path / "eval"
    rc = main(["eval", "zeroshot", "--model", str(model_dir), "--data", str(data), "--templates", "clip7",
               "--class-names", str(tmp_path / "names.json"), "--out", str(out), "--batch-size", "5"])  # fmt: skip
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    metrics = results["metrics"]
    assert results["split"] == "all" and results["settings"]["split_source"] == "every image of the folder"
    assert metrics["class_names"] == NAMES and metrics["n_images"] == 12
    images = [(str(data / c / f"{i}.png"), k) for k, c in enumerate(COLORS) for i in range(4)]
    sims = reference(model_dir, images, NAMES, list(TEMPLATE_SETS["clip7"]))
    truth = torch.tensor([k for _, k in images])
    pred = sims.argmax(1)
    assert metrics["top1"] == pytest.approx(100 * (pred == truth).double().mean().item())
    matrix = [[int(((truth == t) & (pred == p)).sum()) for p in range(3)] for t in range(3)]
    saved = json.loads((out / "confusion_matrix.json").read_text())
    assert saved["matrix"] == matrix and saved["class_names"] == NAMES
    recalls = [100 * matrix[c][c] / 4 for c in range(3)]
    assert metrics["per_class_recall"] == pytest.approx(recalls)
    assert metrics["mean_per_class_recall"] == pytest.approx(sum(recalls) / 3)
    assert metrics["top5"] == 100.0  # three classes: any image's class is in its top 3
    assert (out / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_zeroshot_on_imagenet_layout_reads_val_and_refuses_by(model_dir, tmp_path, capsys):
    write_images(tmp_path / "data" / "train", 2, seed=1)
    write_images(tmp_path / "data" / "val", 3, seed=2)
    out = tmp_path / "eval"
    rc = main(["eval", "zeroshot", "--model", str(model_dir), "--data", str(tmp_path / "data"),
               "--templates", "a photo of a {}.;a {}.", "--out", str(out)])  # fmt: skip
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert results["split"] == "test" and results["metrics"]["n_images"] == 9
    assert results["settings"]["split_source"] == "the val/ folder (there is no test/ folder)"
    assert results["metrics"]["class_names"] == list(COLORS)
    images = [(str(tmp_path / "data" / "val" / c / f"{i}.png"), k) for k, c in enumerate(COLORS) for i in range(3)]
    sims = reference(model_dir, images, list(COLORS), ["a photo of a {}.", "a {}."])
    truth = torch.tensor([k for _, k in images])
    assert results["metrics"]["top1"] == pytest.approx(100 * (sims.argmax(1) == truth).double().mean().item())
    assert "split test: the val/ folder" in capsys.readouterr().out
    assert main(["eval", "zeroshot", "--model", str(model_dir), "--data", str(tmp_path / "data"),
                 "--by", "color"]) == 2  # fmt: skip
    assert "--by / --objects: an image folder is labelled by its class folders" in capsys.readouterr().err
    assert main(["eval", "zeroshot", "--model", str(model_dir), "--data", str(tmp_path / "data"),
                 "--class-names", "a,b"]) == 2  # fmt: skip
    assert "class names: 2 given for 3 class folders (blue, green, red)" in capsys.readouterr().err


def test_probe_on_folders_says_which_images_each_split_holds(model_dir, tmp_path, capsys):
    one = tmp_path / "one"
    write_images(one, 6, seed=3)
    out = tmp_path / "probe-one"
    rc = main(["eval", "probe", "--model", str(model_dir), "--data", str(one), "--out", str(out), "--Cs", "0.1,10",
               "--shots", "1", "--seeds", "2"])  # fmt: skip
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    metrics, splits = results["metrics"], results["settings"]["splits"]
    # 6 images a class: round(6 * 0.3) = 2 test images each; C is picked on round(4 * 0.2) = 1 train image each
    assert (metrics["n_train"], metrics["n_val"], metrics["n_test"]) == (12, 3, 6)
    assert "seeded train part of one folder (test_fraction 0.3, seed 0)" in splits["train"]
    assert "seeded test part" in splits["test"] and "seeded 0.2 of each class of the train split" in splits["val"]
    assert results["settings"]["val_split"] is None
    printed = capsys.readouterr().out
    assert "val: a seeded 0.2 of each class of the train split" in printed
    layout = tmp_path / "imagenet"
    write_images(layout / "train", 4, seed=4)
    write_images(layout / "val", 2, seed=5)
    write_images(layout / "test", 3, seed=6)
    out = tmp_path / "probe-layout"
    rc = main(["eval", "probe", "--model", str(model_dir), "--data", str(layout), "--out", str(out), "--Cs", "1",
               "--shots", "1", "--seeds", "1"])  # fmt: skip
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert (results["metrics"]["n_train"], results["metrics"]["n_val"], results["metrics"]["n_test"]) == (12, 6, 9)
    assert results["settings"]["splits"] == {"train": "the train/ folder", "val": "the val/ folder",
                                             "test": "the test/ folder"}  # fmt: skip
