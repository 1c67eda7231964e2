"""What every format reader shares: the index type, JSON reading, caption checks,
and grouping captions by image for training pairs or retrieval evaluation."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vlp.config import ConfigError
from vlp.data.skipping import Skipped, reject

CaptionMode = Literal["pairs", "images"]

# The image file suffixes every reader takes (folders of images, ImageNet-style class folders, WebDataset
# members, `vlp predict` inputs): torchvision ImageFolder's IMG_EXTENSIONS plus .gif, in the order a
# WebDataset sample with several image members is read from (jpg first, as img2dataset writes it).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".gif")


@dataclass
class SourceIndex:
    """The samples of one split, as plain dicts, plus what was skipped while indexing.

    ``records`` hold absolute paths and raw annotations (no pixels). For
    retrieval evaluation (``mode="images"``) there is one record per image and
    ``texts`` lists every caption with ``txt2img[t]`` = the image index of
    caption ``t`` and ``img2txt[i]`` = the caption indices of image ``i``
    (ALBEF's convention). ``extras`` carries format-specific tables such as
    category names or an answer vocabulary.
    """

    records: list[dict[str, Any]]
    skips: list[Skipped] = field(default_factory=list)
    texts: list[str] | None = None
    txt2img: list[int] | None = None
    img2txt: list[list[int]] | None = None
    extras: dict[str, Any] = field(default_factory=dict)


def read_json(path: Path, what: str) -> Any:
    """Parse a JSON annotation file; a missing or malformed file is a ConfigError naming it.

    Bytes that are not UTF-8 are kept as lone surrogates (``surrogateescape``)
    so that one bad caption is skipped as ``bad_encoding`` instead of making the
    whole file unreadable.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError as err:
        raise ConfigError(f"data.paths.{what}: {path}: file not found") from err
    except IsADirectoryError as err:
        raise ConfigError(f"data.paths.{what}: {path}: is a folder, expected a JSON file") from err
    try:
        return json.loads(raw.decode("utf-8-sig", errors="surrogateescape"))
    except json.JSONDecodeError as err:
        raise ConfigError(f"data.paths.{what}: {path}: not valid JSON ({err})") from err


def expect(condition: bool, path: Path, message: str) -> None:
    """Raise a ConfigError naming the file when an annotation file has the wrong layout."""
    if not condition:
        raise ConfigError(f"{path}: {message}")


# Past this a "caption" is garbage (a whole web page in an alt-text field), not a long description: skipped.
MAX_CAPTION_BYTES = 65_536


def check_text(value: Any, source: str, max_chars: int, strict: bool, field_name: str = "caption") -> str | Skipped:
    """A clean caption/question string, or the :class:`Skipped` record saying why not.

    Whitespace runs become one space. A text longer than ``max_chars`` characters is cut at the
    last space before the limit, not skipped: web alt-text (LAION, CC12M) is often long, and the
    tokenizer keeps only the first ``max_text_len`` tokens anyway. Only a text above
    :data:`MAX_CAPTION_BYTES` UTF-8 bytes is skipped (``overlong_caption``).
    """
    if value is None:
        return reject("missing_field", source, f"no {field_name}", strict)
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return reject("bad_encoding", source, f"{field_name} is not UTF-8", strict)
    if not isinstance(value, str):
        return reject("bad_record", source, f"{field_name} is {type(value).__name__}, expected a string", strict)
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates: undecodable bytes in the file, or a broken \\ud800 escape
        return reject("bad_encoding", source, f"{field_name} is not valid UTF-8", strict)
    if size > MAX_CAPTION_BYTES:
        return reject("overlong_caption", source, f"{field_name} has {size} bytes > {MAX_CAPTION_BYTES}", strict)
    text = " ".join(value.split())
    if not text:
        return reject("empty_caption", source, f"empty {field_name}", strict)
    if len(text) > max_chars:
        cut = text[: max_chars + 1]
        text = cut[: cut.rfind(" ")] if " " in cut[1:] else text[:max_chars]  # whole words when there are any
    return text


def resolve(root: Path, relative: str | Path) -> Path:
    """``root / relative`` unless ``relative`` is absolute."""
    relative = Path(relative)
    return relative if relative.is_absolute() else root / relative


@dataclass
class ImageCaptions:
    """One image and its captions, before the choice between pairs and images mode."""

    image: str
    image_id: Any
    captions: list[Any]
    source: str  # where the entry came from, for skip messages ("file.json[12]")
    extra: dict[str, Any] = field(default_factory=dict)


def group_captions(
    entries: list[ImageCaptions], mode: CaptionMode, max_chars: int, strict: bool, skips: list[Skipped]
) -> SourceIndex:
    """Merge entries of the same image and lay the captions out for training or retrieval.

    ``pairs``: one record per (image, caption) with ``image_index`` = the image's
    position among the split's distinct images (several captions share it, which
    contrastive losses use to avoid treating them as negatives). ``images``: one
    record per image with all its captions, plus ``texts``/``txt2img``/``img2txt``.
    An image whose captions are all bad is dropped in both modes.
    """
    order: dict[str, int] = {}
    merged: list[ImageCaptions] = []
    for entry in entries:
        clean = []
        for k, caption in enumerate(entry.captions):
            text = check_text(caption, f"{entry.source} caption {k}", max_chars, strict)
            if isinstance(text, Skipped):
                skips.append(text)
            else:
                clean.append(text)
        if not clean:
            continue
        slot = order.get(entry.image)
        if slot is None:
            order[entry.image] = len(merged)
            merged.append(ImageCaptions(entry.image, entry.image_id, clean, entry.source, dict(entry.extra)))
        else:
            merged[slot].captions.extend(clean)
    records: list[dict[str, Any]] = []
    if mode == "pairs":
        for index, item in enumerate(merged):
            for caption in item.captions:
                records.append(
                    {"image": item.image, "image_id": item.image_id, "image_index": index, "caption": caption}
                    | item.extra
                )
        return SourceIndex(records, skips)
    texts: list[str] = []
    txt2img: list[int] = []
    img2txt: list[list[int]] = []
    for index, item in enumerate(merged):
        img2txt.append(list(range(len(texts), len(texts) + len(item.captions))))
        texts.extend(item.captions)
        txt2img.extend([index] * len(item.captions))
        records.append(
            {"image": item.image, "image_id": item.image_id, "image_index": index, "captions": item.captions}
            | item.extra
        )
    return SourceIndex(records, skips, texts, txt2img, img2txt)
