"""Image decoding: any file PIL reads -> an RGB ``PIL.Image``, safely and fast.

- JPEG draft mode: libjpeg can decode at 1/2, 1/4 or 1/8 scale, skipping most
  of the inverse DCT and colour conversion, and the resize that follows then
  starts from a smaller image (the bigger saving). :func:`decode_image` asks
  for the smallest scale whose result still covers ``draft_size`` on both
  sides, so a 640x480 photo headed for a 224x224 crop decodes at 320x240.
  The trade: a random crop smaller than the short side is then cut from the
  reduced image and scaled up a little, as when training from images stored
  pre-resized (img2dataset's usual 256 or 384 pixels); ``transform.draft:
  false`` decodes at full size.
- EXIF orientation is applied, so a phone photo is upright.
- Every mode becomes RGB with the right values: alpha (RGBA, LA, PA, P with a
  transparency colour) is composited over ``background`` instead of dropped
  (dropping it exposes whatever colour the transparent pixels happen to hold);
  16-bit integer images (I;16*, and I holding values above 255) are scaled by
  255/65535 instead of clipped at 255; float images (F) are read as [0, 1]
  intensities when their maximum is <= 1 and as [0, 255] otherwise; CMYK,
  YCbCr, HSV, L and 1 use PIL's conversions.
- A decompression bomb (width * height above ``max_pixels``) is refused from
  the header, before any pixel is decoded.
- Damaged JPEG data is refused (``corrupt_image``). A truncated file already
  fails in PIL (``LOAD_TRUNCATED_IMAGES`` stays False), but damaged
  entropy-coded data decodes to garbage without an error: libjpeg's "Corrupt
  JPEG data" warnings never reach Python. What those warnings mostly report is
  a scan whose compressed data does not end where the last block ends. So a
  sequential, single-scan JPEG is decoded from a copy with a few filler bytes
  before its EOI marker and reads that pause twice, shortly before the end of
  the scan and just after the filler: a good scan finishes between the two; a
  damaged one finishes early (data left over) or reads past the filler (data
  missing). It costs no second decode. Progressive and multi-scan JPEGs are
  not checked this way (libjpeg reads all their scans before the first row).
Errors are :class:`ImageError` with one of the skip reasons of
:mod:`vlp.data.skipping`.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ImageSource = str | Path | bytes | Image.Image

_EXIF_ORIENTATION = 0x0112
_SWAPS_AXES = {5, 6, 7, 8}  # orientations that rotate by 90 degrees


class ImageError(Exception):
    """An image that cannot be used; ``reason`` is a skip reason."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


_READ_WHOLE = 16 << 20  # bytes: smaller files are read into memory at once
_SEQUENTIAL_HUFFMAN = (0xC0, 0xC1)  # SOF0 baseline, SOF1 extended sequential
_OTHER_FRAMES = frozenset(range(0xC2, 0xD0)) - {0xC4, 0xC8, 0xCC}  # progressive, lossless, arithmetic
_FILLER = 16  # >= libjpeg's bit-buffer look-ahead (57 bits = 8 bytes), so a good scan finishes inside it
_EARLY = 2  # the first pause: this many bytes before the scan's end


def _first_marker(data: bytes, start: int) -> int:
    """Position of the first marker at or after ``start`` in entropy-coded data, -1 if none: an 0xFF
    not followed by a stuffed 0x00, a restart marker 0xD0-0xD7, or another 0xFF (fill)."""
    # numpy: a Python loop over the 0xFF bytes, or bytes.find of a two-byte marker, costs several times more
    tail = np.frombuffer(data, np.uint8, offset=start)
    ff = np.flatnonzero(tail[:-1] == 0xFF)
    after = tail[ff + 1]
    hits = ff[(after != 0) & (after != 0xFF) & ((after < 0xD0) | (after > 0xD7))]
    return start + int(hits[0]) if len(hits) else -1


def _scan_end(data: bytes) -> int | None:
    """Where the only scan of a sequential Huffman JPEG ends (its EOI marker); None when not such a file."""
    i, components = 2, 0
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker == 0xD9 or marker in _OTHER_FRAMES:
            return None  # no scan, or a frame type that libjpeg reads whole before the first row
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in _SEQUENTIAL_HUFFMAN and i + 10 <= len(data):
            components = data[i + 9]
        if marker == 0xDA:
            start = i + 2 + length
            # a scan with fewer components than the frame: more scans follow, all read before the first row
            if not components or i + 4 >= len(data) or data[i + 4] != components or start >= len(data):
                return None
            end = _first_marker(data, start)
            if end < 0 or data[end + 1] != 0xD9 or end - _EARLY <= start:
                return None  # truncated inside the scan (PIL reports that itself) or an unusual marker
            return end
        i += 2 + length
    return None


class _ScanProbe(io.BytesIO):
    """A JPEG with ``_FILLER`` zero bytes inserted before its EOI, whose reads pause at
    ``end - _EARLY`` and at ``end + _FILLER``; where PIL stopped reading tells whether the
    decoder finished its blocks exactly where the compressed data ends (see the module docstring)."""

    def __init__(self, data: bytes, end: int) -> None:
        super().__init__(data[:end] + bytes(_FILLER) + data[end:])
        self.end = end
        self.pauses = (end - _EARLY, end + _FILLER)
        # until arm(): BytesIO's own read, which shadows the pausing one; PIL parses the header in ~35 small
        # reads, far before the first pause, and a Python method per read cost ~25 us an image
        self.read = super().read  # type: ignore[method-assign]

    def arm(self) -> None:
        """Pause reads from now on (call before decoding the scan)."""
        self.__dict__.pop("read", None)

    def read(self, size: int | None = -1) -> bytes:
        position = self.tell()
        for pause in self.pauses:
            if position < pause:
                size = pause - position if size is None or size < 0 else min(size, pause - position)
                break
        return super().read(size)

    def check(self) -> None:
        """Raise ``corrupt_image`` unless decoding finished between the two pauses."""
        stopped = self.tell()
        if stopped <= self.pauses[0]:
            raise ImageError("corrupt_image", "corrupt JPEG data: all blocks decoded before the scan data ended")
        if stopped > self.pauses[1]:
            raise ImageError("corrupt_image", "corrupt JPEG data: the scan data ended before the last block")


_PNG_HEADER = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR"  # signature, then the IHDR chunk's length and type


def _png_quiet(data: bytes) -> bool:
    """True for a PNG whose header declares no more pixels than PIL's warning limit: PIL checks a PNG's size only
    in Image.open, from that header, so opening and decoding it cannot warn and needs no catch_warnings."""
    if len(data) < 24 or not data.startswith(_PNG_HEADER):
        return False
    limit = Image.MAX_IMAGE_PIXELS  # read now: a caller may have changed it
    width, height = struct.unpack(">II", data[16:24])
    return limit is None or max(1, width) * max(1, height) <= limit


def _open_bytes(data: bytes) -> tuple[Image.Image, _ScanProbe | None, bool]:
    end = _scan_end(data) if data[:3] == b"\xff\xd8\xff" else None
    probe = None if end is None else _ScanProbe(data, end)
    quiet = _png_quiet(data)
    with contextlib.nullcontext() if quiet else _no_bomb_warning():
        return Image.open(io.BytesIO(data) if probe is None else probe), probe, quiet


def _open(source: ImageSource) -> tuple[Image.Image, _ScanProbe | None, bool]:
    """``(image, probe, quiet)``: the opened image, the scan probe of a JPEG, and whether decoding it cannot give
    PIL's DecompressionBombWarning (else the caller silences it: vlp's own ``max_pixels`` decides)."""
    if isinstance(source, Image.Image):
        return source, None, True
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageError("empty_file", "zero bytes")
        return _open_bytes(bytes(source))
    path = os.fspath(source)  # os, not pathlib: a Path per image costs more than the stat and the open
    try:
        handle = open(path, "rb")  # closed by the with below; PIL reopens only a large non-JPEG by name
    except FileNotFoundError as err:
        raise ImageError("missing_file", f"{Path(path)} does not exist") from err
    with handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            raise ImageError("empty_file", "zero bytes")
        # a JPEG is read whole, through this one open, for the scan check; so is any file up to _READ_WHOLE
        # (one read instead of PIL opening the file again and reading it in pieces: ~10 us of a 32x32 PNG's ~80)
        if size <= _READ_WHOLE or handle.read(3) == b"\xff\xd8\xff":
            handle.seek(0)
            return _open_bytes(handle.read())
    with _no_bomb_warning():
        return Image.open(path), None, False  # other large files stream from disk


# where PIL's getexif finds an orientation: these info keys (EXIF, ImageMagick's hex EXIF in a PNG, XMP) or a
# TIFF's own tags; an image with none of them is upright, and building PIL's Exif object to say so costs
# ~10 us (a fifth of decoding a 32x32 PNG)
_ORIENTATION_INFO = ("exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp")


def _orientation(image: Image.Image) -> int:
    info = image.info
    if not hasattr(image, "tag_v2") and not any(key in info for key in _ORIENTATION_INFO):
        return 1
    try:
        return int(image.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # a damaged EXIF block must not cost the image
        return 1


def _alpha_over(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    rgba = image.convert("RGBA")
    base = Image.new("RGBA", rgba.size, (*background, 255))
    return Image.alpha_composite(base, rgba).convert("RGB")


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Convert any PIL mode to RGB (see the module docstring for the rules)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        return _alpha_over(image, background)
    if mode == "P" or mode in ("L", "1", "CMYK", "YCbCr", "HSV", "RGBX"):
        return image.convert("RGB")
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image, dtype=np.float64)
        # 'I' comes from 16-bit PNGs too; only values above 8 bits tell the two apart
        if mode != "I" or values.max(initial=0) > 255:
            values = values * (255.0 / 65535.0)
        gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        values = np.nan_to_num(values, nan=0.0, posinf=255.0, neginf=0.0)
        if values.max(initial=0) <= 1.0:
            values = values * 255.0
        gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as err:
        raise ImageError("unsupported_mode", f"mode {mode} has no RGB conversion") from err


@contextlib.contextmanager
def _no_bomb_warning() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def decode_image(
    source: ImageSource,
    draft_size: tuple[int, int] | None = None,
    max_pixels: int = 89_478_485,
    background: tuple[int, int, int] = (255, 255, 255),
) -> tuple[Image.Image, tuple[int, int]]:
    """Decode ``source`` to an upright RGB image.

    Args:
        source: a path, the encoded bytes, or an already open PIL image.
        draft_size: (width, height) the caller needs at least; JPEGs may then
            decode at a reduced scale that still covers it. None = full size.
        max_pixels: refuse images whose width * height exceeds this.
        background: colour that transparent pixels are composited over.

    Returns:
        ``(image, (width, height))``: the RGB image, and the full-resolution
        size of the upright image (what annotations in pixels refer to), so that
        callers can rescale boxes when draft mode decoded a smaller image.
    """
    try:
        # our own pixel limit replaces PIL's warning (given when opening, and by some formats, GIF among them,
        # when decoding); PIL's hard error (2x its limit) still applies. An open image or a PNG within PIL's
        # limit cannot warn and skips catch_warnings: it costs ~5 us, a tenth of decoding a 32x32 PNG
        image, probe, quiet = _open(source)
        with contextlib.nullcontext() if quiet else _no_bomb_warning():
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError("decompression_bomb", f"{width}x{height} exceeds max_image_pixels={max_pixels}")
            orientation = None
            if draft_size is not None and image.format == "JPEG":
                # a JPEG's EXIF block is parsed with the header; for other formats reading it may decode
                # the pixels (PNG), so it waits until after load() where decoding errors surface
                orientation = _orientation(image)
                want = (draft_size[1], draft_size[0]) if orientation in _SWAPS_AXES else draft_size
                # draft picks the largest 1/2^k reduction that keeps both sides >= want
                image.draft("RGB" if image.mode in ("RGB", "YCbCr") else image.mode, want)
            if probe is not None:
                probe.arm()
            image.load()
            if probe is not None:
                probe.check()
            if orientation is None:
                orientation = _orientation(image)
            full_size = (height, width) if orientation in _SWAPS_AXES else (width, height)
    except ImageError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageError("decompression_bomb", str(err)) from err
    except UnidentifiedImageError as err:
        raise ImageError("not_an_image", "PIL cannot identify the format") from err
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as err:
        raise ImageError("corrupt_image", f"{type(err).__name__}: {err}") from err
    if orientation != 1:
        image = ImageOps.exif_transpose(image)
    return to_rgb(image, background), full_size
