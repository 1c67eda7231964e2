"""EXIF orientation is looked for only where PIL would find one (an image without EXIF or XMP skips building
PIL's Exif object, ~10 us of a small PNG's ~50); every place PIL reads it from still turns the image."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageOps, PngImagePlugin

from vlp.data.image_io import decode_image


def _stored() -> Image.Image:
    # 40x20: left half red, right half blue, so any rotation or mirror shows
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20] = (255, 0, 0)
    pixels[:, 20:] = (0, 0, 255)
    return Image.fromarray(pixels)


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _xmp(orientation: int) -> bytes:
    return (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="%d"/></rdf:RDF></x:xmpmeta>'
        % orientation
    )


def _write(path, kind: str, orientation: int) -> None:
    image = _stored()
    if kind == "png-exif":
        image.save(path, "PNG", exif=_exif(orientation))
    elif kind == "png-xmp":
        info = PngImagePlugin.PngInfo()
        info.add_itxt("XML:com.adobe.xmp", _xmp(orientation).decode())
        image.save(path, "PNG", pnginfo=info)
    elif kind == "png-raw-profile":  # ImageMagick's way: hex EXIF in a text chunk
        raw = _exif(orientation)
        info = PngImagePlugin.PngInfo()
        info.add_text("Raw profile type exif", f"\nexif\n{len(raw):8d}\n{raw.hex()}\n")
        image.save(path, "PNG", pnginfo=info)
    elif kind == "tiff":
        image.save(path, "TIFF", exif=_exif(orientation))
    elif kind == "webp":
        image.save(path, "WEBP", lossless=True, exif=_exif(orientation))
    elif kind == "jpeg-xmp":
        image.save(path, "JPEG", quality=95, xmp=_xmp(orientation))


@pytest.mark.parametrize("kind", ["png-exif", "png-xmp", "png-raw-profile", "tiff", "webp", "jpeg-xmp"])
@pytest.mark.parametrize("orientation", [3, 6])
def test_every_place_pil_reads_orientation_from_turns_the_image(tmp_path, kind: str, orientation: int) -> None:
    path = tmp_path / f"image.{kind.split('-')[0]}"
    _write(path, kind, orientation)
    with Image.open(path) as opened:
        assert opened.getexif().get(0x0112) == orientation  # PIL sees it
        expected = np.asarray(ImageOps.exif_transpose(opened).convert("RGB"))
    image, full = decode_image(path)
    assert expected.shape[:2] != (20, 40) or orientation == 3  # the reference itself was turned
    assert np.array_equal(np.asarray(image), expected)
    assert full == (expected.shape[1], expected.shape[0])


def test_an_image_without_exif_or_xmp_builds_no_exif_object(tmp_path, monkeypatch) -> None:
    _stored().save(tmp_path / "plain.png")
    _stored().save(tmp_path / "plain.jpg", quality=95)
    calls = []
    original = Image.Image.getexif
    monkeypatch.setattr(Image.Image, "getexif", lambda self: calls.append(self.format) or original(self))
    for name in ("plain.png", "plain.jpg"):
        image, full = decode_image(tmp_path / name)
        assert image.size == full == (40, 20)
        decode_image(tmp_path / name, draft_size=(10, 10))
    assert calls == []
