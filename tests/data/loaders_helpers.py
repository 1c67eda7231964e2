"""Fixture builders for the loader tests: tiny files in the real datasets' formats."""

from __future__ import annotations

import functools
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vlp.text.tokenizer import Tokenizer

# a distinct, exactly representable colour per image index, so tests can tell images apart from pixels
PALETTE = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (200, 30, 200)]


def color_of(i: int) -> tuple[int, int, int]:
    return PALETTE[i % len(PALETTE)]


def write_png(path: Path, size: tuple[int, int] = (32, 24), color: tuple[int, int, int] = (200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def patterned(size: tuple[int, int], i: int) -> Image.Image:
    """An image whose every crop and flip looks different: a gradient plus a square in image i's colour."""
    w, h = size
    x = np.linspace(0, 255, w)[None, :, None]
    y = np.linspace(0, 255, h)[:, None, None]
    pixels = np.concatenate([np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)), np.full((h, w, 1), 90)], 2)
    image = Image.fromarray(pixels.astype(np.uint8))
    image.paste(color_of(i), (w // 5, h // 4, w // 2, h // 2))
    return image


def jpeg_bytes(
    size: tuple[int, int] = (32, 24), color: tuple[int, int, int] = (200, 30, 30), quality: int = 95
) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A tar shard written the way img2dataset/webdataset write theirs (Python's tarfile)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def webdataset_samples(start: int, count: int, size: tuple[int, int] = (16, 16)) -> list[tuple[str, bytes]]:
    """img2dataset-layout members for samples start..start+count-1 (caption "caption N")."""
    members = []
    for n in range(start, start + count):
        key = f"{n:09d}"
        meta = {"key": key, "caption": f"caption {n}", "width": size[0], "height": size[1], "url": "", "image_id": n}
        members += [
            (f"{key}.jpg", _jpeg(patterned(size, n))),
            (f"{key}.txt", f"caption {n}".encode()),
            (f"{key}.json", json.dumps(meta).encode()),
        ]
    return members


def write_manifest(root: Path, count: int, name: str = "manifest_train.jsonl") -> Path:
    """``count`` good images with two captions each, as a JSONL manifest."""
    lines = []
    for i in range(count):
        (root / "images").mkdir(parents=True, exist_ok=True)
        patterned((32, 24), i).save(root / "images" / f"{i:03d}.png")
        lines.append(json.dumps({"image": f"{i:03d}.png", "captions": [f"photo {i} a", f"photo {i} b"], "image_id": i}))
    path = root / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@functools.lru_cache(maxsize=1)
def tiny_tokenizer() -> Tokenizer:
    """vlp's WordPiece tokenizer trained on a few words (milliseconds)."""
    words = "a the photo caption of red green blue circle square left right above below image dog cat man".split()
    corpus = [" ".join(words)] * 3 + [f"photo {i} caption {i}" for i in range(100)]
    return Tokenizer.train(corpus, vocab_size=300)


def dump(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def region_file(path: Path, boxes: list[list[float]], width: int, height: int, dim: int = 8, **extra: Any) -> Path:
    """A bottom-up-attention style region file with features row r = r + 1 (easy to check)."""
    count = len(boxes)
    arrays = {
        "features": np.arange(1, count + 1, dtype=np.float32)[:, None].repeat(dim, 1),
        "boxes": np.array(boxes, dtype=np.float32).reshape(count, 4),
        "image_w": np.int64(width),
        "image_h": np.int64(height),
        "num_boxes": np.int64(count),
    } | extra
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path
