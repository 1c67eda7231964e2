"""ShapesWorld writes each real format with the real keys, and its boxes match the pixels."""

from __future__ import annotations

import io
import json
import pickle
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlp.data.shapesworld import generate

SPLITS = ("train", "val", "test", "holdout")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shapes") / "ds"
    generate(out, images=40, size=64, seed=5, shard_size=15, workers=1)
    return out


def load(root: Path, name: str):
    return json.loads((root / "annotations" / name).read_text())


def test_meta_counts_and_vocabulary(root: Path) -> None:
    meta = json.loads((root / "meta.json").read_text())
    assert meta["counts"] == {"train": 29, "val": 4, "test": 3, "holdout": 4}  # 40 - 4 holdout = 36 -> 0.8/0.1/0.1
    assert len(meta["shapes"]) >= 5 and len(meta["colors"]) >= 6 and meta["sizes"] == ["small", "medium", "large"]
    assert [c["name"] for c in meta["categories"]] == meta["shapes"]
    assert set(meta["relations"]) == {"left of", "right of", "above", "below"}
    assert round(0.12 * len(meta["shapes"]) * len(meta["colors"])) == len(meta["holdout_combinations"])
    for split in SPLITS:
        assert len(list((root / "images" / split).glob("*.png"))) == meta["counts"][split]


def test_karpathy_layout(root: Path) -> None:
    data = load(root, "dataset_shapes.json")
    assert data["dataset"] == "shapes" and len(data["images"]) == 40
    sentids = []
    for imgid, img in enumerate(data["images"]):
        assert set(img) == {"filepath", "filename", "imgid", "cocoid", "split", "sentids", "sentences"}
        assert img["imgid"] == imgid and img["split"] in SPLITS
        assert img["filepath"] == f"images/{img['split']}" and img["filename"] == f"{img['cocoid']:07d}.png"
        assert (root / img["filepath"] / img["filename"]).is_file()
        assert len(img["sentences"]) == 5 and img["sentids"] == [s["sentid"] for s in img["sentences"]]
        for s in img["sentences"]:
            assert set(s) == {"raw", "tokens", "imgid", "sentid"} and s["imgid"] == imgid
            assert s["tokens"] == re.findall(r"[a-z0-9]+", s["raw"].lower())
        sentids += img["sentids"]
    assert sentids == list(range(len(sentids)))


def test_albef_caption_files(root: Path) -> None:
    karpathy = {img["cocoid"]: img for img in load(root, "dataset_shapes.json")["images"]}
    train = load(root, "captions_train.json")
    assert len(train) == 29 * 5
    for entry in train:
        assert set(entry) == {"image", "caption", "image_id"} and isinstance(entry["caption"], str)
        image_id = int(entry["image_id"].removeprefix("shapes_"))
        assert entry["image"] == f"images/train/{image_id:07d}.png"
        assert entry["caption"] in [s["raw"] for s in karpathy[image_id]["sentences"]]
    for split in ("val", "test", "holdout"):
        for entry in load(root, f"captions_{split}.json"):
            assert set(entry) == {"image", "caption"} and len(entry["caption"]) == 5
            image_id = int(Path(entry["image"]).stem)
            assert entry["caption"] == [s["raw"] for s in karpathy[image_id]["sentences"]]


def object_extent(image: np.ndarray, bbox: list[float], rgb: list[int]) -> tuple[tuple[int, ...], float] | None:
    """Pixel extent (x0, y0, x1, y1) of the pixels at least half covered by colour ``rgb`` near ``bbox``,
    and the object's area in pixels (the summed coverage).

    Coverage is estimated from colours only: a pixel is c*a + bg*(1-a), with bg the median of
    a ring of pixels 3 px outside the box.
    """
    h, w, _ = image.shape
    x, y, bw, bh = bbox
    x0, y0 = max(int(np.floor(x)) - 1, 0), max(int(np.floor(y)) - 1, 0)
    x1, y1 = min(int(np.ceil(x + bw)) + 1, w), min(int(np.ceil(y + bh)) + 1, h)
    rx0, ry0, rx1, ry1 = max(x0 - 2, 0), max(y0 - 2, 0), min(x1 + 2, w), min(y1 + 2, h)
    img = image.astype(np.float64)
    ring = np.concatenate([img[ry0, rx0:rx1], img[ry1 - 1, rx0:rx1], img[ry0:ry1, rx0], img[ry0:ry1, rx1 - 1]])
    bg, c = np.median(ring, axis=0), np.asarray(rgb, dtype=np.float64)
    alpha = 1.0 - np.linalg.norm(img[y0:y1, x0:x1] - c, axis=-1) / np.linalg.norm(bg - c)
    ys, xs = np.nonzero(alpha >= 0.5)
    if len(xs) == 0:
        return None
    return (x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1), float(np.clip(alpha, 0, 1).sum())


def test_coco_instances_boxes_match_pixels(root: Path) -> None:
    meta = json.loads((root / "meta.json").read_text())
    ann_ids = set()
    for split in SPLITS:
        coco = load(root, f"instances_{split}.json")
        assert {"images", "annotations", "categories"} <= set(coco)
        assert [c["id"] for c in coco["categories"]] == list(range(1, len(meta["shapes"]) + 1))
        images = {im["id"]: im for im in coco["images"]}
        assert len(images) == meta["counts"][split]
        for ann in coco["annotations"]:
            assert {"id", "image_id", "category_id", "bbox", "area", "iscrowd", "segmentation"} <= set(ann)
            assert ann["iscrowd"] == 0 and ann["id"] not in ann_ids
            ann_ids.add(ann["id"])
            info = images[ann["image_id"]]
            assert (info["width"], info["height"]) == (64, 64)
            image = np.asarray(Image.open(root / "images" / split / info["file_name"]).convert("RGB"))
            rgb = meta["colors"][ann["attributes"]["color"]]
            x, y, bw, bh = ann["bbox"]
            found = object_extent(image, ann["bbox"], rgb)
            assert found is not None, ann
            extent, coverage = found
            # COCO [x, y, w, h] matches the rendered object's pixel extent within 2 px on every side
            assert np.allclose(extent, (x, y, x + bw, y + bh), atol=2.0), (extent, ann["bbox"])
            # pixels of exactly the palette colour exist and all lie inside the box
            exact = np.all(image == rgb, axis=-1)
            wy, wx = np.nonzero(exact[max(int(y) - 3, 0) : int(y + bh) + 4, max(int(x) - 3, 0) : int(x + bw) + 4])
            assert len(wx) > 0
            assert wx.min() + max(int(x) - 3, 0) >= x - 0.5 and wx.max() + max(int(x) - 3, 0) + 1 <= x + bw + 0.5
            # segmentation polygon lies in the box; area is the rendered area (within noise and rounding)
            poly = np.asarray(ann["segmentation"][0]).reshape(-1, 2)
            assert poly[:, 0].min() >= x - 0.01 and poly[:, 0].max() <= x + bw + 0.01
            assert poly[:, 1].min() >= y - 0.01 and poly[:, 1].max() <= y + bh + 0.01
            assert ann["area"] == pytest.approx(coverage, rel=0.12, abs=4.0)
            # size classes are disjoint ranges of the box's longer side (fraction of the image)
            side = max(bw, bh) / 64
            expected = "small" if side < 0.19 else "medium" if side < 0.257 else "large"
            assert ann["attributes"]["size"] == expected
    everything = load(root, "instances.json")
    assert {a["id"] for a in everything["annotations"]} == ann_ids
    for im in everything["images"]:  # RefCOCO's instances: file_name relative to images/
        assert (root / "images" / im["file_name"]).is_file()


def test_vqa_questions_and_annotations(root: Path) -> None:
    for split in SPLITS:
        qs = load(root, f"v2_OpenEnded_shapes_{split}_questions.json")
        anns = load(root, f"v2_shapes_{split}_annotations.json")
        assert qs["task_type"] == "Open-Ended" and qs["data_subtype"] == split and qs["data_type"] == "shapes"
        assert [set(q) for q in qs["questions"]] == [{"image_id", "question", "question_id"}] * len(qs["questions"])
        assert [q["question_id"] for q in qs["questions"]] == [a["question_id"] for a in anns["annotations"]]
        for a in anns["annotations"]:
            assert a["answer_type"] in ("yes/no", "number", "other")
            assert len(a["answers"]) == 10 and [x["answer_id"] for x in a["answers"]] == list(range(1, 11))
            assert all(x["answer_confidence"] == "yes" for x in a["answers"])
            assert all(x["answer"] == a["multiple_choice_answer"] for x in a["answers"])  # noise defaults to 0
            assert a["question_id"] // 1000 == a["image_id"]


def test_answer_noise_flag(tmp_path: Path) -> None:
    generate(tmp_path / "n", images=30, size=32, seed=1, answer_noise=0.3, formats=("vqa",), workers=1)
    anns = load(tmp_path / "n", "v2_shapes_train_annotations.json")["annotations"]
    wrong = [x["answer"] != a["multiple_choice_answer"] for a in anns for x in a["answers"]]
    assert 0.15 < np.mean(wrong) < 0.45  # about 30 % of the ten answers are noise
    for a in anns:  # the consensus answer is still the majority
        answers = [x["answer"] for x in a["answers"]]
        assert answers.count(a["multiple_choice_answer"]) == max(answers.count(v) for v in answers)


def test_refcoco_pickle(root: Path) -> None:
    raw = (root / "annotations" / "refs(unc).p").read_bytes()
    assert raw[:2] == b"\x80\x02"  # pickle protocol 2, as RefCOCO ships
    refs = pickle.loads(raw)
    anns = {a["id"]: a for a in load(root, "instances.json")["annotations"]}
    assert refs and [r["ref_id"] for r in refs] == list(range(len(refs)))
    sent_ids = []
    for ref in refs:
        keys = {"ref_id", "ann_id", "image_id", "split", "sentences", "category_id", "file_name", "sent_ids"}
        assert set(ref) == keys
        ann = anns[ref["ann_id"]]
        assert ann["image_id"] == ref["image_id"] and ann["category_id"] == ref["category_id"]
        assert ref["file_name"] == f"{ref['image_id']:07d}_{ref['ref_id']}.png"
        assert 1 <= len(ref["sentences"]) <= 3 and ref["sent_ids"] == [s["sent_id"] for s in ref["sentences"]]
        for s in ref["sentences"]:
            assert set(s) == {"raw", "sent", "tokens", "sent_id"} and s["sent"] == " ".join(s["tokens"])
        sent_ids += ref["sent_ids"]
    assert sent_ids == list(range(len(sent_ids)))


def test_webdataset_shards(root: Path) -> None:
    manifest = {}
    for split in SPLITS:
        for line in (root / f"manifest_{split}.jsonl").read_text().splitlines():
            entry = json.loads(line)
            manifest[entry["image_id"]] = entry
    shards = sorted((root / "shards").glob("train-*.tar"))
    assert [p.name for p in shards] == ["train-00000.tar", "train-00001.tar"]  # 29 samples, 15 per shard
    seen = []
    for shard_no, path in enumerate(shards):
        with tarfile.open(path) as tar:
            names = tar.getnames()
            keys = list(dict.fromkeys(n.split(".")[0] for n in names))
            assert names == [f"{k}.{ext}" for k in keys for ext in ("jpg", "txt", "json")]
            for offset, key in enumerate(keys):
                assert key == f"{shard_no:05d}{offset:04d}" and len(key) == 9
                meta = json.loads(tar.extractfile(f"{key}.json").read())
                assert {"key", "caption", "width", "height", "url", "image_id"} <= set(meta) and meta["key"] == key
                text = tar.extractfile(f"{key}.txt").read().decode()
                assert text == meta["caption"] == manifest[meta["image_id"]]["captions"][0]
                jpg = Image.open(io.BytesIO(tar.extractfile(f"{key}.jpg").read()))
                assert jpg.format == "JPEG" and jpg.size == (meta["width"], meta["height"]) == (64, 64)
                png = np.asarray(Image.open(root / manifest[meta["image_id"]]["image"]), dtype=np.float64)
                diff = np.asarray(jpg.convert("RGB"), dtype=np.float64) - png
                # quality 95: per-pixel error is about the background noise, 8x8 block means agree closely
                assert np.abs(diff).mean() < 6.0
                assert np.abs(diff.reshape(8, 8, 8, 8, 3).mean(axis=(1, 3))).max() < 3.0
                seen.append(meta["image_id"])
    assert seen == list(range(1, 30))


def test_region_files(root: Path) -> None:
    meta = json.loads((root / "meta.json").read_text())
    coco = load(root, "instances.json")
    by_image: dict[int, list[dict]] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    for image_id, anns in by_image.items():
        with np.load(root / "regions" / f"{image_id:07d}.npz") as z:  # no pickle needed
            r = len(anns)
            assert z["features"].shape == (r, 64) and z["features"].dtype == np.float32
            assert np.isfinite(z["features"]).all()
            assert int(z["num_boxes"]) == r and int(z["image_w"]) == int(z["image_h"]) == 64
            xyxy = [
                [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns
            ]
            assert np.allclose(z["boxes"], xyxy, atol=0.02)
            assert list(z["objects_id"]) == [a["category_id"] - 1 for a in anns]
            assert np.allclose(z["cls_prob"].sum(1), 1.0) and list(z["cls_prob"].argmax(1)) == list(z["objects_id"])
            assert np.allclose(z["objects_conf"], z["cls_prob"].max(1))
            assert list(z["tags"]) == [meta["shapes"][a["category_id"] - 1] for a in anns]
            assert [list(meta["colors"])[k] for k in z["attrs_id"]] == [a["attributes"]["color"] for a in anns]


def test_region_features_separate_classes(root: Path) -> None:
    """Same-class regions are closer in feature space than different-class ones (the descriptor is informative)."""
    feats, labels = [], []
    for path in sorted((root / "regions").glob("*.npz")):
        with np.load(path) as z:
            feats.append(z["features"])
            labels += list(z["objects_id"])
    x, y = np.concatenate(feats), np.asarray(labels)
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    same = (y[:, None] == y[None]) & ~np.eye(len(y), dtype=bool)
    assert d[same].mean() < 0.8 * d[y[:, None] != y[None]].mean()


def test_manifests(root: Path) -> None:
    karpathy = {img["cocoid"]: img for img in load(root, "dataset_shapes.json")["images"]}
    coco = load(root, "instances.json")
    tags: dict[int, list[str]] = {}
    names = {c["id"]: c["name"] for c in coco["categories"]}
    for ann in coco["annotations"]:
        tags.setdefault(ann["image_id"], []).append(names[ann["category_id"]])
    for split in SPLITS:
        for line in (root / f"manifest_{split}.jsonl").read_text().splitlines():
            entry = json.loads(line)
            assert set(entry) == {"image", "captions", "image_id", "tags"}
            assert (root / entry["image"]).is_file() and entry["image"].startswith(f"images/{split}/")
            assert entry["captions"] == [s["raw"] for s in karpathy[entry["image_id"]]["sentences"]]
            assert entry["tags"] == tags[entry["image_id"]]
