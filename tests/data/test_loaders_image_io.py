"""Decoding: every PIL mode to the right RGB values, EXIF orientation, JPEG draft mode, bad files."""

from __future__ import annotations

import io

import numpy as np
import pytest
from loaders_helpers import jpeg_bytes, patterned, write_png
from PIL import Image

from vlp.data.image_io import ImageError, decode_image, to_rgb


def _pixel(image: Image.Image, xy: tuple[int, int] = (0, 0)) -> tuple[int, ...]:
    assert image.mode == "RGB"
    return tuple(int(v) for v in image.getpixel(xy))


def _roundtrip_png(image: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return Image.open(io.BytesIO(buffer.getvalue()))


def test_alpha_modes_composite_over_white() -> None:
    # RGBA red at alpha 128 over white: G = B = 255 * (1 - 128/255) = 127
    rgba = Image.new("RGBA", (2, 1), (255, 0, 0, 128))
    r, g, b = _pixel(to_rgb(rgba))
    assert r == 255 and abs(g - 127) <= 1 and abs(b - 127) <= 1
    # a fully transparent pixel shows the background, whatever colour it stores
    assert _pixel(to_rgb(Image.new("RGBA", (1, 1), (9, 200, 9, 0)))) == (255, 255, 255)
    la = Image.new("LA", (2, 1), (100, 255))
    la.putpixel((1, 0), (100, 0))
    rgb = to_rgb(la)
    assert _pixel(rgb, (0, 0)) == (100, 100, 100) and _pixel(rgb, (1, 0)) == (255, 255, 255)
    assert _pixel(to_rgb(Image.new("RGBA", (1, 1), (0, 0, 0, 0)), background=(1, 2, 3))) == (1, 2, 3)


def test_palette_with_and_without_transparency() -> None:
    palette = Image.new("P", (2, 1), 0)
    palette.putpalette([7, 7, 7, 10, 20, 30] + [0, 0, 0] * 254)
    palette.putpixel((1, 0), 1)
    assert _pixel(to_rgb(palette), (0, 0)) == (7, 7, 7) and _pixel(to_rgb(palette), (1, 0)) == (10, 20, 30)
    buffer = io.BytesIO()
    palette.save(buffer, "PNG", transparency=0)  # index 0 transparent, as GIFs and PNG8 files do
    reloaded = Image.open(io.BytesIO(buffer.getvalue()))
    assert reloaded.mode == "P" and "transparency" in reloaded.info
    rgb = to_rgb(reloaded)
    assert _pixel(rgb, (0, 0)) == (255, 255, 255) and _pixel(rgb, (1, 0)) == (10, 20, 30)


def test_16_bit_images_are_scaled_not_clipped() -> None:
    values = np.array([[0, 128 * 257, 65535]], dtype=np.uint16)
    i16 = Image.fromarray(values)
    assert i16.mode == "I;16"
    expected = [(0, 0, 0), (128, 128, 128), (255, 255, 255)]
    assert [_pixel(to_rgb(i16), (x, 0)) for x in range(3)] == expected
    # a 16-bit PNG reopens as I or I;16 depending on the Pillow version: same values either way
    reopened = _roundtrip_png(i16)
    assert [_pixel(to_rgb(reopened), (x, 0)) for x in range(3)] == expected
    # 32-bit 'I' holding 8-bit values is left as is
    eight = Image.fromarray(np.array([[0, 77, 200]], dtype=np.int32))
    assert eight.mode == "I"
    assert [_pixel(to_rgb(eight), (x, 0))[0] for x in range(3)] == [0, 77, 200]


def test_float_gray_and_bilevel_and_cmyk() -> None:
    unit = Image.fromarray(np.array([[0.0, 0.25, 1.0]], dtype=np.float32))
    assert [_pixel(to_rgb(unit), (x, 0))[0] for x in range(3)] == [0, 64, 255]  # 0.25 * 255 = 63.75
    wide = Image.fromarray(np.array([[3.0, 200.0, 400.0]], dtype=np.float32))
    assert [_pixel(to_rgb(wide), (x, 0))[0] for x in range(3)] == [3, 200, 255]
    assert _pixel(to_rgb(Image.new("L", (1, 1), 77))) == (77, 77, 77)
    bilevel = Image.new("1", (2, 1), 0)
    bilevel.putpixel((1, 0), 1)
    assert _pixel(to_rgb(bilevel), (0, 0)) == (0, 0, 0) and _pixel(to_rgb(bilevel), (1, 0)) == (255, 255, 255)
    # CMYK: no ink is white, magenta + yellow ink is red
    assert _pixel(to_rgb(Image.new("CMYK", (1, 1), (0, 0, 0, 0)))) == (255, 255, 255)
    assert _pixel(to_rgb(Image.new("CMYK", (1, 1), (0, 255, 255, 0)))) == (255, 0, 0)


def test_exif_orientation_is_applied(tmp_path) -> None:
    # stored 40x20: left half red, right half blue; orientation 6 = display rotated 90 degrees clockwise
    stored = Image.new("RGB", (40, 20), (230, 20, 20))
    stored.paste((20, 20, 230), (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    stored.save(path, "JPEG", quality=95, exif=exif.tobytes())
    image, full = decode_image(path)
    assert image.size == (20, 40) and full == (20, 40)
    top, bottom = _pixel(image, (10, 5)), _pixel(image, (10, 35))
    assert top[0] > 200 and top[2] < 60  # the stored left (red) half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_jpeg_draft_mode_decodes_at_reduced_scale(tmp_path) -> None:
    path = tmp_path / "big.jpg"
    path.write_bytes(jpeg_bytes((640, 480), (90, 140, 190)))
    image, full = decode_image(path, draft_size=(224, 224))
    assert image.size == (320, 240) and full == (640, 480)  # 1/2 keeps both sides >= 224; 1/4 would not
    image, _ = decode_image(path, draft_size=(100, 100))
    assert image.size == (160, 120)
    image, _ = decode_image(path)
    assert image.size == (640, 480)
    assert np.abs(np.asarray(image, dtype=int) - (90, 140, 190)).max() <= 3
    # PNGs have no draft mode: full size
    png = write_png(tmp_path / "x.png", (64, 48))
    assert decode_image(png, draft_size=(16, 16))[0].size == (64, 48)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty_file"),
        (b"this is a caption file, not an image\n", "not_an_image"),
        ("truncated", "corrupt_image"),
        ("missing", "missing_file"),
        ("bomb", "decompression_bomb"),
    ],
)
def test_bad_images_raise_with_their_reason(tmp_path, content, reason) -> None:
    path = tmp_path / "bad.jpg"
    if content == "truncated":
        data = jpeg_bytes((64, 64))
        path.write_bytes(data[: len(data) // 2])
    elif content == "bomb":
        path = write_png(tmp_path / "bomb.png", (200, 200))
    elif content != "missing":
        path.write_bytes(content)
    with pytest.raises(ImageError) as info:
        decode_image(path, max_pixels=10_000)
    assert info.value.reason == reason


def _scan_jpeg(**save: object) -> tuple[bytes, int, int]:
    """A JPEG with real entropy-coded data, and where its scan data starts and ends (the EOI marker)."""
    buffer = io.BytesIO()
    patterned((96, 64), 1).save(buffer, "JPEG", quality=95, **save)
    data = buffer.getvalue()
    sos = data.index(b"\xff\xda")
    start = sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")
    return data, start, data.rindex(b"\xff\xd9")


def _damaged(data: bytes, at: int, value: int) -> bytes:
    bad = bytearray(data)
    bad[at : at + 6] = bytes([value]) * 6
    return bytes(bad)


@pytest.mark.parametrize("offset", [111, 333, 555])
def test_damaged_jpeg_scan_data_is_corrupt_not_garbage(tmp_path, offset) -> None:
    data, start, _ = _scan_jpeg()
    # six bytes of the scan overwritten: libjpeg's djpeg reports "Corrupt JPEG data: premature end of
    # data segment" for each of these, yet PIL decodes them without a word, to different pixels
    bad = _damaged(data, start + offset, 0x00)
    silent = np.asarray(Image.open(io.BytesIO(bad)).convert("RGB"), dtype=int)
    assert np.abs(silent - np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=int)).mean() > 5
    path = tmp_path / "damaged.jpg"
    path.write_bytes(bad)
    for source, draft in ((path, None), (bad, None), (path, (24, 24))):
        with pytest.raises(ImageError, match="scan data ended before the last block") as info:
            decode_image(source, draft_size=draft)
        assert info.value.reason == "corrupt_image"


def test_jpeg_with_leftover_scan_data_is_corrupt() -> None:
    data, _, end = _scan_jpeg()
    # bytes between the last block and EOI: djpeg says "Corrupt JPEG data: 36 extraneous bytes before marker 0xd9"
    bad = data[:end] + b"\x12\x34" * 20 + data[end:]
    with pytest.raises(ImageError, match="all blocks decoded before the scan data ended") as info:
        decode_image(bad)
    assert info.value.reason == "corrupt_image"


@pytest.mark.parametrize(
    "save",
    [
        {},
        {"subsampling": 0},
        {"subsampling": 2, "quality": 40},
        {"optimize": True},
        {"progressive": True},
        {"restart_marker_blocks": 3},
        {"restart_marker_rows": 1},
        {"icc_profile": b"\x00" * 3000},
    ],  # fmt: skip
)
def test_well_formed_jpegs_decode_exactly_as_pil_does(tmp_path, save) -> None:
    for mode, size in (("RGB", (96, 64)), ("L", (37, 23)), ("CMYK", (40, 8))):
        buffer = io.BytesIO()
        patterned(size, 2).convert(mode).save(buffer, "JPEG", **save)
        for data in (buffer.getvalue(), buffer.getvalue() + b"trailing bytes after EOI"):
            expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
            assert np.array_equal(np.asarray(decode_image(data)[0]), expected)
            path = tmp_path / "good.jpg"
            path.write_bytes(data)
            drafted = Image.open(io.BytesIO(data))
            drafted.draft(drafted.mode, (12, 8))
            assert np.array_equal(np.asarray(decode_image(path, draft_size=(12, 8))[0]),
                                  np.asarray(drafted.convert("RGB")))  # fmt: skip
