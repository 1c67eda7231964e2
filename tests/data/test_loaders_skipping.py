"""Bad input never ends a run: every kind of bad file is skipped and counted, good samples all arrive."""

from __future__ import annotations

import io
import json
import logging

import pytest
from loaders_helpers import jpeg_bytes, patterned, tiny_tokenizer, webdataset_samples, write_png, write_tar
from PIL import Image

from vlp.config import from_dict
from vlp.data.config import DataConfig
from vlp.data.loader import build_loader
from vlp.data.skipping import SampleError

GOOD = 6


def _corrupt_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (1, 2, 3)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    length = int.from_bytes(data[data.find(b"IDAT") - 4 : data.find(b"IDAT")], "big")
    start = data.find(b"IDAT") + 6  # past the chunk type and the 2-byte zlib header
    data[start : start + length - 2] = b"\xff" * (length - 2)  # the deflate stream is garbage
    return bytes(data)


def _bad_dataset(root) -> dict[str, str]:
    """Writes GOOD good samples and one of every kind of bad one; returns {reason: line/file} expected."""
    images = root / "images"
    lines: list[bytes] = []
    for i in range(GOOD):
        write_png(images / f"good{i}.png")
        lines.append(json.dumps({"image": f"good{i}.png", "caption": f"photo {i}", "image_id": i}).encode())
    bad_files = {
        "corrupt_image": ("corrupt.png", _corrupt_png()),
        "zero": ("zero.jpg", b""),
        "not_an_image": ("notes.jpg", b"a caption that was saved with the wrong extension\n"),
        "truncated": ("truncated.jpg", jpeg_bytes((64, 64))[:300]),
    }
    for name, data in bad_files.values():
        (images / name).write_bytes(data)
    write_png(images / "bomb.png", (400, 300))  # 120,000 pixels > the limit below
    for k, (name, _) in enumerate(bad_files.values()):
        lines.append(json.dumps({"image": name, "caption": "fine words", "image_id": 100 + k}).encode())
    lines += [
        json.dumps({"image": "bomb.png", "caption": "fine", "image_id": 200}).encode(),
        json.dumps({"image": "missing.png", "caption": "fine", "image_id": 201}).encode(),
        json.dumps({"image": "good0.png", "caption": "   ", "image_id": 202}).encode(),
        json.dumps({"image": "good0.png", "caption": "word " * 14000, "image_id": 203}).encode(),  # 70,000 bytes
        b'{"image": "good0.png", "caption": "caf\xe9 latin-1 bytes", "image_id": 204}',
        b'{"image": "good0.png", "caption": "a lone surrogate \\udce9 escape", "image_id": 205}',
        b'{"image": "good0.png", "caption": "unterminated',
        json.dumps({"caption": "no image key"}).encode(),
    ]
    (root / "manifest_train.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return {}


def _config(root, **extra) -> DataConfig:
    data = {"type": "manifest", "root": str(root), "paths": {"images": "images"}, "image_size": 16,
            "max_image_pixels": 100_000, "max_caption_chars": 300} | extra  # fmt: skip
    return from_dict(DataConfig, data)


EXPECTED = {
    "corrupt_image": 2,  # damaged PNG data stream + truncated JPEG
    "empty_file": 1,
    "not_an_image": 1,
    "decompression_bomb": 1,
    "missing_file": 1,
    "empty_caption": 1,
    "overlong_caption": 1,
    "bad_encoding": 2,  # a Latin-1 line, and a JSON escape that is no character
    "malformed_json": 1,
    "missing_field": 1,
}


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_every_bad_input_is_skipped_and_counted(tmp_path, caplog, workers) -> None:
    _bad_dataset(tmp_path)
    loader = build_loader(_config(tmp_path), "train", tiny_tokenizer(), batch_size=4, num_workers=workers,
                          shuffle=False, drop_last=False)  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="vlp.data"):
        delivered = [m["image_id"] for batch in loader for m in batch.meta]
    assert sorted(delivered) == list(range(GOOD))  # every good sample, once
    assert loader.skip_counts == EXPECTED
    total = sum(EXPECTED.values())
    assert loader.skips.summary() == (
        f"skipped {total}: bad_encoding=2, corrupt_image=2, decompression_bomb=1, empty_caption=1, empty_file=1, "
        "malformed_json=1, missing_field=1, missing_file=1, not_an_image=1, overlong_caption=1"
    )
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "while indexing, skipped 6: bad_encoding=2, empty_caption=1" in logged  # text problems: at index time
    assert "epoch 0: skipped 6: corrupt_image=2, decompression_bomb=1" in logged  # image problems: per sample


def test_strict_mode_raises_naming_file_and_reason(tmp_path) -> None:
    _bad_dataset(tmp_path)
    with pytest.raises(SampleError, match=r"manifest_train\.jsonl:15: bad_encoding \(line is not UTF-8\)"):
        build_loader(_config(tmp_path, strict=True), "train", batch_size=4)
    (tmp_path / "manifest_train.jsonl").write_text(
        json.dumps({"image": "good0.png", "caption": "ok"}) + "\n" + json.dumps({"image": "notes.jpg", "caption": "x"})
    )
    loader = build_loader(_config(tmp_path, strict=True), "train", batch_size=2, shuffle=False)
    with pytest.raises(SampleError, match=r"images/notes\.jpg: not_an_image"):
        list(loader)


@pytest.mark.slow  # DataLoader worker processes
def test_truncated_and_bad_tar_shards_are_skipped(tmp_path) -> None:
    write_tar(tmp_path / "shards" / "train-00000.tar", webdataset_samples(0, 5))
    bad_members = [
        ("000000100.jpg", b"not a jpeg"), ("000000100.txt", b"corrupt image"),
        ("000000101.jpg", jpeg_bytes()), ("000000101.txt", b"caf\xe9"),  # not UTF-8
        ("000000102.jpg", jpeg_bytes()),  # no caption at all
        ("000000103.jpg", jpeg_bytes()), ("000000103.txt", b""),  # empty caption
    ]  # fmt: skip
    write_tar(tmp_path / "shards" / "train-00001.tar", webdataset_samples(5, 3) + bad_members)
    whole = write_tar(tmp_path / "train-00002.tar", webdataset_samples(8, 6)).read_bytes()
    # cut in the middle of sample 11's image: samples 8..10 survive
    cut = whole.find(b"000000011.jpg") + 512 + 100
    (tmp_path / "shards" / "train-00002.tar").write_bytes(whole[:cut])
    (tmp_path / "shards" / "train-00003.tar").write_bytes(b"")  # zero-byte shard
    config = from_dict(DataConfig, {"type": "webdataset", "root": str(tmp_path), "image_size": 16,
                                    "paths": {"shards": "shards/train-{00000..00003}.tar"}})  # fmt: skip
    loader = build_loader(config, "train", tiny_tokenizer(), batch_size=4, num_workers=2, drop_last=False)
    delivered = sorted(m["image_id"] for batch in loader for m in batch.meta)
    assert delivered == list(range(11))
    assert loader.skip_counts == {"truncated_shard": 2, "not_an_image": 1, "bad_encoding": 1, "missing_field": 1,
                                  "empty_caption": 1}  # fmt: skip


def test_damaged_jpeg_data_is_skipped_and_counted_or_raises_when_strict(tmp_path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    buffer = io.BytesIO()
    patterned((96, 64), 1).save(buffer, "JPEG", quality=95)
    good = buffer.getvalue()
    (images / "good.jpg").write_bytes(good)
    start = good.index(b"\xff\xda") + 14  # past the SOS segment of this 3-component JPEG
    damaged = bytearray(good)
    damaged[start + 333 : start + 339] = bytes(6)  # libjpeg: "Corrupt JPEG data: premature end of data segment"
    (images / "damaged.jpg").write_bytes(bytes(damaged))
    lines = [{"image": "good.jpg", "caption": "fine", "image_id": 0}, {"image": "damaged.jpg", "caption": "fine"}]
    (tmp_path / "manifest_train.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    loader = build_loader(_config(tmp_path), "train", tiny_tokenizer(), batch_size=2, shuffle=False, drop_last=False)
    assert [m["image_id"] for batch in loader for m in batch.meta] == [0]
    assert loader.skip_counts == {"corrupt_image": 1}
    strict = build_loader(_config(tmp_path, strict=True), "train", tiny_tokenizer(), batch_size=2, shuffle=False)
    with pytest.raises(SampleError, match=r"images/damaged\.jpg: corrupt_image \(corrupt JPEG data"):
        list(strict)
