"""An image folder plus a manifest: the simplest way to bring your own data.

JSONL (``.jsonl``/``.json`` lines): one object per line with ``image`` (path
relative to the images folder) and ``captions`` (a list) or ``caption``
(a string or a list; ``text`` is accepted too), optionally ``image_id``,
``tags`` (object tags, for OSCAR-style models) and ``split``. Other keys are
ignored.

CSV / TSV (with a header row): columns ``image`` (or ``filepath``/``path``/
``file_name``) and ``caption`` (or ``text``/``title``), optional ``image_id``
and ``split``; one caption per row, rows of the same image are merged. The
separator is sniffed from the header (tab, comma, ``;`` or ``|``), so
OpenCLIP's tab-separated ``.csv`` files read as they are. :class:`CsvFormat`
takes OpenCLIP's three settings as data options: ``csv_separator``,
``csv_img_key`` and ``csv_caption_key``.

Splits: one file per split (``manifest_{split}.jsonl``, the default path), or
one file whose records carry a ``split`` field, filtered by it. A file with
neither holds training data only: asking it for another split is an error,
never the training images under another name; split ``all`` takes every record
(of every ``manifest_*`` file, for a per-split path).

A line that is not valid JSON, not UTF-8, or lacks ``image`` is skipped and
counted (``malformed_json``, ``bad_encoding``, ``missing_field``); the rest of
the file still loads.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlp.config import ConfigError
from vlp.data.skipping import Skipped, reject
from vlp.data.sources.common import CaptionMode, ImageCaptions, SourceIndex, group_captions, resolve

_IMAGE_KEYS = ("image", "filepath", "path", "file_name")
_CAPTION_KEYS = ("captions", "caption", "text", "title")


ALL_SPLITS = "all"  # the split name that takes every record


@dataclass
class CsvFormat:
    """How a CSV manifest is laid out; empty = sniffed / the usual column names (OpenCLIP's
    ``--csv-separator``, ``--csv-img-key``, ``--csv-caption-key``)."""

    separator: str = ""
    image_key: str = ""
    caption_key: str = ""


def _first(record: dict[str, Any], keys: tuple[str, ...], keep_empty: bool = False) -> Any:
    for key in keys:
        if key in record and record[key] is not None and (keep_empty or record[key] != ""):
            return record[key]
    return None


def _image_of(record: Any, image_keys: tuple[str, ...]) -> str | tuple[str, str]:
    """The record's image path as written, or ``(skip reason, detail)``."""
    if not isinstance(record, dict):
        return "bad_record", f"expected a JSON object, got {type(record).__name__}"
    image = _first(record, image_keys)
    if not isinstance(image, str):
        return "missing_field", f"no '{image_keys[0]}' path"
    return image


def _entry(
    record: Any, images_dir: Path, source: str, strict: bool, image_keys: tuple[str, ...] = _IMAGE_KEYS,
    caption_keys: tuple[str, ...] = _CAPTION_KEYS,
) -> ImageCaptions | Skipped:  # fmt: skip
    image = _image_of(record, image_keys)
    if isinstance(image, tuple):
        return reject(image[0], source, image[1], strict)
    # an empty caption is there but empty (empty_caption), not missing
    captions = _first(record, caption_keys, keep_empty=True)
    if captions is None:
        return reject("missing_field", source, "no " + "/".join(f"'{k}'" for k in caption_keys[:2]), strict)
    if not isinstance(captions, list):
        captions = [captions]
    extra: dict[str, Any] = {}
    if isinstance(record.get("tags"), list):
        extra["tags"] = [str(t) for t in record["tags"]]
    if record.get("split") not in (None, ""):
        extra["split"] = str(record["split"])
    image_id = record.get("image_id", Path(image).stem)
    return ImageCaptions(str(resolve(images_dir, image)), image_id, captions, source, extra)


@dataclass(frozen=True)
class ManifestRow:
    """One record of a manifest (a JSONL line, a CSV row as ``{column: cell}``), or why it has none."""

    source: str  # FILE:LINE
    record: Any = None
    problem: tuple[str, str] | None = None  # (skip reason, detail)


def _jsonl_rows(path: Path) -> Iterator[ManifestRow]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            source = f"{path}:{number}"
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield ManifestRow(source, problem=("bad_encoding", "line is not UTF-8"))
                continue
            try:
                yield ManifestRow(source, json.loads(line))
            except json.JSONDecodeError as err:
                yield ManifestRow(source, problem=("malformed_json", str(err)))


def _separator(path: Path, header: str, fmt: CsvFormat) -> str:
    if fmt.separator:
        return "\t" if fmt.separator in ("\\t", "tab") else fmt.separator
    # the header names columns, which hold no tabs: the first separator found in it is the one
    found = [sep for sep in ("\t", ",", ";", "|") if sep in header]
    return found[0] if found else ("\t" if path.suffix == ".tsv" else ",")


def _keys(path: Path, fmt: CsvFormat) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The image and caption keys a manifest is read with: csv_img_key / csv_caption_key name CSV / TSV columns
    (OpenCLIP's options); a JSONL manifest keeps the default keys."""
    if path.suffix.lower() not in (".csv", ".tsv"):
        return _IMAGE_KEYS, _CAPTION_KEYS
    return (fmt.image_key,) if fmt.image_key else _IMAGE_KEYS, (fmt.caption_key,) if fmt.caption_key else _CAPTION_KEYS


def _csv_rows(path: Path, fmt: CsvFormat, captions: bool) -> Iterator[ManifestRow]:
    text = path.read_bytes().decode("utf-8-sig", errors="surrogateescape")
    separator = _separator(path, text.split("\n", 1)[0], fmt)
    if len(separator) != 1:
        raise ConfigError(f"data.options.csv_separator: {fmt.separator!r} must be one character (or \\t)")
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=separator)
    header = reader.fieldnames or []
    image_keys, caption_keys = _keys(path, fmt)
    if not any(k in header for k in image_keys) or (captions and not any(k in header for k in caption_keys)):
        wanted = f"an image column ({'/'.join(image_keys)})"
        wanted += f" and a caption column ({'/'.join(caption_keys)})" if captions else ""
        raise ConfigError(
            f"{path}: CSV header {header} (separator {separator!r}) needs {wanted}; set data.options.csv_img_key "
            "/ csv_caption_key / csv_separator"
        )
    for number, row in enumerate(reader, start=2):
        if None in row:  # more cells than header columns: a broken row
            yield ManifestRow(f"{path}:{number}", problem=("bad_record", "more cells than header columns"))
        else:
            yield ManifestRow(f"{path}:{number}", dict(row))


def manifest_rows(path: Path, csv_format: CsvFormat | None = None, captions: bool = True) -> Iterator[ManifestRow]:
    """Every record of a JSONL or CSV / TSV manifest, in file order: the one reader of manifest files (the
    loader's :func:`read_manifest` and ``vlp predict``'s inputs). ``captions``: a CSV header must name a caption
    column too (a header without the columns needed is a ConfigError; a bad line is a row with a problem)."""
    if path.suffix.lower() in (".csv", ".tsv"):
        return _csv_rows(path, csv_format or CsvFormat(), captions)
    return _jsonl_rows(path)


def manifest_images(path: Path, csv_format: CsvFormat | None = None) -> Iterator[tuple[str, str | Path]]:
    """``(FILE:LINE, image)`` for every record of a manifest, captions or not: ``image`` is the record's image
    file (a :class:`~pathlib.Path`, relative paths resolved against the manifest's folder), or a ``"reason:
    detail"`` string saying why the record gives none (the reasons :func:`read_manifest` skips it for)."""
    image_keys, _ = _keys(path, csv_format or CsvFormat())
    for row in manifest_rows(path, csv_format, captions=False):
        image = _image_of(row.record, image_keys) if row.problem is None else row.problem
        yield row.source, (f"{image[0]}: {image[1]}" if isinstance(image, tuple) else resolve(path.parent, image))


def _read_entries(
    path: Path, images_dir: Path, strict: bool, skips: list[Skipped], fmt: CsvFormat
) -> list[ImageCaptions]:
    image_keys, caption_keys = _keys(path, fmt)
    entries = []
    for row in manifest_rows(path, fmt):
        if row.problem is not None:
            skips.append(reject(row.problem[0], row.source, row.problem[1], strict))
            continue
        entry = _entry(row.record, images_dir, row.source, strict, image_keys, caption_keys)
        (skips if isinstance(entry, Skipped) else entries).append(entry)
    return entries


def _by_split(entries: list[ImageCaptions], split: str, source: str, strict: bool, skips: list[Skipped],
              file_per_split: bool) -> list[ImageCaptions]:  # fmt: skip
    """The entries of ``split`` by their ``split`` field. A file without that field is the split
    when its name came from a ``{split}`` template, and training data only otherwise."""
    found = Counter(entry.extra.get("split") for entry in entries)
    if set(found) == {None}:
        if file_per_split or split in ("train", ALL_SPLITS):
            return entries
        raise ConfigError(
            f"{source}: no split {split!r}: the file has no 'split' field and its name no {{split}}, so it holds "
            f"training data only ({len(entries)} records). Add a 'split' field to each record, use one file per "
            f"split (manifest_{{split}}.jsonl), or ask for split '{ALL_SPLITS}' to use every record"
        )
    if split == ALL_SPLITS:
        return entries
    kept = []
    for entry in entries:
        if entry.extra.get("split") is None:  # the file has splits, this record names none
            skips.append(reject("missing_field", entry.source, "no 'split' (other records have one)", strict))
        elif entry.extra["split"] == split:
            kept.append(entry)
    if not kept:
        counts = ", ".join(f"{name} ({n})" for name, n in sorted(found.items(), key=lambda kv: str(kv[0])) if name)
        raise ConfigError(f"{source}: no record has split {split!r}; the file's splits: {counts}")
    return kept


def manifest_files(template: str, root: Path) -> list[Path]:
    """The files a ``{split}`` manifest path names, one per split found."""
    pattern = Path(template.replace("{split}", "*"))
    folder = pattern.parent if pattern.is_absolute() else root / pattern.parent
    return sorted(folder.glob(pattern.name)) if folder.is_dir() else []


def read_manifest(
    manifest: Path,
    images_dir: Path,
    mode: CaptionMode = "pairs",
    max_chars: int = 2000,
    strict: bool = False,
    split: str | None = None,
    csv_format: CsvFormat | None = None,
    template: str = "",
    root: Path = Path("."),
) -> SourceIndex:
    """Index a JSONL or CSV manifest; image paths are relative to ``images_dir``.

    ``split``: keep the records of this split (see the module docstring); None keeps every record.
    ``template``: the path as the recipe gives it, with ``{split}`` (relative to ``root``).
    """
    fmt = csv_format or CsvFormat()
    skips: list[Skipped] = []
    per_split = "{split}" in template
    if per_split and split == ALL_SPLITS and not manifest.is_file():
        files = manifest_files(template, root)
        if not files:
            raise ConfigError(f"data.paths.manifest: no file matches {template} under {root}")
        entries = [e for path in files for e in _read_entries(path, images_dir, strict, skips, fmt)]
        return group_captions(entries, mode, max_chars, strict, skips)
    if not manifest.is_file():
        found = [p.name for p in manifest_files(template, root)] if per_split else []
        raise ConfigError(
            f"data.paths.manifest: {manifest}: file not found"
            + (f" (split {split!r}; manifests found: {', '.join(found) or 'none'})" if per_split else "")
        )
    entries = _read_entries(manifest, images_dir, strict, skips, fmt)
    if split is not None:
        entries = _by_split(entries, split, str(manifest), strict, skips, per_split)
    return group_captions(entries, mode, max_chars, strict, skips)
