"""Manifests as people write them: OpenCLIP's tab-separated CSVs, long web captions, and splits."""

from __future__ import annotations

import json

import pytest
from loaders_helpers import tiny_tokenizer, write_png

from vlp.config import ConfigError, from_dict
from vlp.data.config import DataConfig
from vlp.data.loader import build_dataset, build_loader


def _config(root, manifest: str | None = None, **options) -> DataConfig:
    paths = {"images": "images"} | ({"manifest": manifest} if manifest else {})
    return from_dict(DataConfig, {"type": "manifest", "root": str(root), "image_size": 16, "paths": paths,
                                  "options": options, "max_text_len": 8})  # fmt: skip


def _images(root, count: int) -> None:
    for i in range(count):
        write_png(root / "images" / f"{i}.png", (8, 8))


def _jsonl(path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _captions(dataset) -> list[str]:
    return [r["caption"] for r in dataset.index.records]


def test_openclip_tab_separated_csv_reads_whatever_its_extension(tmp_path) -> None:
    _images(tmp_path, 2)
    # OpenCLIP's default layout: tab-separated, columns filepath and title, in a file named .csv
    (tmp_path / "train.csv").write_text("filepath\ttitle\n0.png\ta dog, a cat\n1.png\tred, green\n")
    assert _captions(build_dataset(_config(tmp_path, "train.csv"), "train")) == ["a dog, a cat", "red, green"]
    # its --csv-separator / --csv-img-key / --csv-caption-key, as data options
    (tmp_path / "other.csv").write_text("id;img;alt;desc\n7;0.png;x;a dog\n8;1.png;y;a cat\n")
    config = _config(tmp_path, "other.csv", csv_separator=";", csv_img_key="img", csv_caption_key="desc")
    assert _captions(build_dataset(config, "train")) == ["a dog", "a cat"]
    (tmp_path / "tabs.csv").write_text("img\tdesc\n0.png\tone\n")  # "\t" as typed in YAML or --set
    config = _config(tmp_path, "tabs.csv", csv_separator="\\t", csv_img_key="img", csv_caption_key="desc")
    assert _captions(build_dataset(config, "train")) == ["one"]
    with pytest.raises(ConfigError, match=r"other\.csv: CSV header \['id', 'img', 'alt', 'desc'\].*\(picture\)"):
        build_dataset(_config(tmp_path, "other.csv", csv_img_key="picture"), "train")


def test_long_captions_are_truncated_not_skipped(tmp_path) -> None:
    _images(tmp_path, 3)
    long = "photo caption " * 600  # 8,400 characters: long alt-text, not garbage
    _jsonl(tmp_path / "manifest_train.jsonl", [
        {"image": "0.png", "caption": long}, {"image": "1.png", "caption": ""}, {"image": "2.png"},
        {"image": "2.png", "caption": "x" * 70_000},
    ])  # fmt: skip
    tokenizer = tiny_tokenizer()
    loader = build_loader(_config(tmp_path), "train", tokenizer, batch_size=4, shuffle=False, drop_last=False)
    batch = next(iter(loader))
    # cut to whole words within max_caption_chars = 2000: 142 x "photo caption " + "photo" = 1993 characters
    assert len(batch.meta) == 1 and batch.meta[0]["text"] == "photo caption " * 142 + "photo"
    # the tokenizer keeps max_text_len = 8 tokens: [CLS], the first six word pieces, [SEP]
    pieces = tokenizer.backend.encode(long, add_special_tokens=False).ids[:6]
    assert batch.input_ids[0].tolist() == [tokenizer.cls_id, *pieces, tokenizer.sep_id]
    # "" is an empty caption, an absent key a missing one, 70,000 bytes garbage
    assert loader.skip_counts == {"empty_caption": 1, "missing_field": 1, "overlong_caption": 1}


def test_a_single_manifest_without_splits_is_training_data_only(tmp_path) -> None:
    _images(tmp_path, 3)
    _jsonl(tmp_path / "manifest.jsonl", [{"image": f"{i}.png", "caption": f"photo {i}"} for i in range(3)])
    config = _config(tmp_path, "manifest.jsonl")
    assert len(build_dataset(config, "train")) == 3 and len(build_dataset(config, "all", train=False)) == 3
    with pytest.raises(ConfigError, match=r"manifest\.jsonl: no split 'test': the file has no 'split' field"):
        build_dataset(config, "test")


def test_split_field_filters_records(tmp_path) -> None:
    _images(tmp_path, 4)
    splits = ["train", "train", "test", None]
    _jsonl(tmp_path / "all.jsonl", [{"image": f"{i}.png", "caption": f"photo {i}"} | ({"split": s} if s else {})
                                    for i, s in enumerate(splits)])  # fmt: skip
    config = _config(tmp_path, "all.jsonl")
    train = build_loader(config, "train", tiny_tokenizer(), batch_size=4, shuffle=False, drop_last=False)
    assert _captions(train.dataset) == ["photo 0", "photo 1"] and train.skip_counts == {"missing_field": 1}
    test = build_dataset(config, "test", train=True)
    assert _captions(test) == ["photo 2"]
    with pytest.raises(ConfigError, match=r"all\.jsonl: no record has split 'val'; the file's splits: test \(1\), "
                                          r"train \(2\)"):  # fmt: skip
        build_dataset(config, "val")


def test_per_split_files_name_what_exists(tmp_path) -> None:
    _images(tmp_path, 3)
    _jsonl(tmp_path / "manifest_train.jsonl", [{"image": "0.png", "caption": "photo 0"},
                                               {"image": "1.png", "caption": "photo 1"}])  # fmt: skip
    _jsonl(tmp_path / "manifest_val.jsonl", [{"image": "2.png", "caption": "photo 2"}])
    assert _captions(build_dataset(_config(tmp_path), "val", train=True)) == ["photo 2"]
    everything = build_dataset(_config(tmp_path), "all", train=True)
    assert sorted(_captions(everything)) == ["photo 0", "photo 1", "photo 2"]
    with pytest.raises(ConfigError, match=r"manifest_test\.jsonl: file not found \(split 'test'; manifests found: "
                                          r"manifest_train\.jsonl, manifest_val\.jsonl\)"):  # fmt: skip
        build_dataset(_config(tmp_path), "test")


def test_csv_column_options_leave_a_jsonl_manifest_on_its_keys(tmp_path) -> None:
    """csv_img_key / csv_caption_key name CSV columns (OpenCLIP's options): a JSONL split read with the same
    options keeps the default keys instead of skipping every record."""
    _images(tmp_path, 2)
    (tmp_path / "train.csv").write_text("img,alt text\n0.png,a dog\n")
    _jsonl(tmp_path / "val.jsonl", [{"image": "1.png", "caption": "a cat"}])
    options = dict(csv_img_key="img", csv_caption_key="alt text")
    assert _captions(build_dataset(_config(tmp_path, "train.csv", **options), "train")) == ["a dog"]
    assert _captions(build_dataset(_config(tmp_path, "val.jsonl", **options), "train")) == ["a cat"]
