"""Pieces the ``vlp predict`` tests share: photos to predict on, running the command, reading its lines."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from vlp.cli import main


def draw_photos(folder: Path, count: int = 5) -> list[Path]:
    """``count`` small PNG photos of different sizes and colours (a coloured disc on random noise), so that
    models tell them apart; PNG is lossless, so every reader decodes the same pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    rng = np.random.default_rng(0)
    for i in range(count):
        h, w = 30 + 3 * i, 44 - 2 * i
        pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        yy, xx = np.mgrid[:h, :w]
        disc = (yy - h / 2) ** 2 + (xx - w / 3 - i) ** 2 < (h / 4) ** 2
        pixels[disc] = [(60 * i) % 256, 255 - 40 * i, 90]
        path = folder / f"photo{i}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def run_predict(capsys, *argv: object) -> tuple[int, str, str]:
    """``(exit code, stdout, stderr)`` of ``vlp predict ARGV`` run in this process."""
    capsys.readouterr()
    code = main(["predict", *(str(a) for a in argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]
