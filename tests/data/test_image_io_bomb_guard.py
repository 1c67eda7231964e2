"""PIL's DecompressionBombWarning stays silent under decode_image (vlp's own max_pixels decides), and a PNG whose
header declares no more than PIL's warning limit skips the catch_warnings guard (~5 us of a 32x32 PNG's ~60)."""

from __future__ import annotations

import warnings

import numpy as np
from PIL import Image

from vlp.data import image_io
from vlp.data.image_io import decode_image


def _count_guards(monkeypatch) -> list[int]:
    entered: list[int] = []
    original = image_io._no_bomb_warning

    def counting():
        entered.append(1)
        return original()

    monkeypatch.setattr(image_io, "_no_bomb_warning", counting)
    return entered


def test_pils_warning_never_escapes_and_small_pngs_skip_the_guard(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL warns above 100 pixels, refuses above 200
    pixels = np.arange(10 * 10 * 3, dtype=np.uint8).reshape(10, 10, 3)
    Image.fromarray(pixels).save(tmp_path / "over.png")  # 100 pixels: at the limit, PIL stays quiet
    Image.fromarray(pixels[:, :8]).save(tmp_path / "under.png")
    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(tmp_path / "warns.png")  # 144 > 100: PIL warns
    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(tmp_path / "warns.gif")
    entered = _count_guards(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        image, _ = decode_image(tmp_path / "over.png")
        assert np.array_equal(np.asarray(image), pixels)
        assert decode_image(tmp_path / "under.png")[0].size == (8, 10)
        assert decode_image((tmp_path / "under.png").read_bytes())[0].size == (8, 10)
        assert entered == []
        assert decode_image(tmp_path / "warns.png")[0].size == (12, 12)
        assert decode_image(tmp_path / "warns.gif")[0].size == (12, 12)
        assert entered  # the guard ran where PIL would have warned
