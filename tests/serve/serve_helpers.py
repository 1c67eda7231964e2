"""Shared pieces of the serve tests: a tiny random BLIP folder (it embeds, captions, answers and grounds),
a folder of drawn images, and an embeddings index of that folder written as `vlp predict embed` does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

import vlp
from vlp.io.embeddings import EmbeddingWriter
from vlp.recipe import recipe_dict
from vlp.tasks.common import image_batch, load_model
from vlp.text import Tokenizer

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square")
TEXTS = [f"a {c} {s}" for c in COLOURS for s in SHAPES] + ["what color is the shape ?", "a picture of"]


def tiny_blip(folder: Path, seed: int = 0) -> Path:
    """A save_pretrained folder of ``blip-tiny`` with random weights and a WordPiece tokenizer of the test words."""
    tokenizer = Tokenizer.train(TEXTS * 4, vocab_size=120)
    data = recipe_dict("blip-tiny")
    torch.manual_seed(seed)
    return vlp.save_pretrained(vlp.create_model(data), folder, tokenizer=tokenizer)


def draw(colour: str, shape: str, size: int = 48, background: tuple[int, int, int] = (128, 128, 128)) -> Image.Image:
    image = Image.new("RGB", (size, size), background)
    box = [size // 4, size // 4, 3 * size // 4, 3 * size // 4]
    pen = ImageDraw.Draw(image)
    (pen.ellipse if shape == "circle" else pen.rectangle)(box, fill=COLOURS[colour])
    return image


def image_folder(root: Path) -> list[Path]:
    """Eight PNGs ``root/<colour>_<shape>.png`` (every colour and shape)."""
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for colour in COLOURS:
        for shape in SHAPES:
            path = root / f"{colour}_{shape}.png"
            draw(colour, shape).save(path)
            paths.append(path)
    return paths


def write_embeddings(model_folder: Path, paths: list[Path], out: Path, listed: list[str] | None = None) -> np.ndarray:
    """An embeddings folder of ``paths`` as ``vlp predict embed`` writes it (``listed`` overrides the keys)."""
    loaded = load_model(model_folder)
    with torch.no_grad():
        vectors = loaded.model.encode_image(image_batch(loaded.model, paths)).numpy()
    EmbeddingWriter(out, str(model_folder)).write_shard(listed or [str(p) for p in paths], vectors)
    return vectors


def multipart(fields: dict[str, str], image: bytes | None = None, filename: str = "upload.png") -> tuple[bytes, str]:
    """``(body, content type)`` of a multipart/form-data request with text ``fields`` and an ``image`` file."""
    boundary = "vlp-test-boundary-7f3a"
    parts = []
    for key, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
    if image is not None:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
        parts.append(head.encode() + b"Content-Type: application/octet-stream\r\n\r\n" + image + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def request(url: str, body: bytes | None = None, content_type: str | None = None, method: str | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict]:  # fmt: skip
    """``(status, JSON body)`` of one HTTP request (10 s timeout); error statuses are returned, not raised."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    if content_type:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def png_bytes(image: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
