"""An image folder plus a manifest: the simplest way to bring your own data.

JSONL (``.jsonl``/``.json`` lines): one object per line with ``image`` (path
relative to the images folder) and ``captions`` (a list) or ``caption``
(a string or a list; ``text`` is accepted too), optionally ``image_id`` and
``tags`` (object tags, for OSCAR-style models). Other keys are ignored.

CSV / TSV (``.csv``/``.tsv``, with a header row): columns ``image`` (or
``filepath``/``path``/``file_name``) and ``caption`` (or ``text``/``title``),
optional ``image_id``; one caption per row, rows of the same image are merged.

A line that is not valid JSON, not UTF-8, or lacks ``image`` is skipped and
counted (``malformed_json``, ``bad_encoding``, ``missing_field``); the rest of
the file still loads.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from vlp.config import ConfigError
from vlp.data.skipping import Skipped, reject
from vlp.data.sources.common import CaptionMode, ImageCaptions, SourceIndex, group_captions, resolve

_IMAGE_KEYS = ("image", "filepath", "path", "file_name")
_CAPTION_KEYS = ("captions", "caption", "text", "title")


def _first(record: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        if key in record and record[key] not in (None, ""):
            return record[key]
    return None


def _entry(record: Any, images_dir: Path, source: str, strict: bool) -> ImageCaptions | Skipped:
    if not isinstance(record, dict):
        return reject("bad_record", source, f"expected a JSON object, got {type(record).__name__}", strict)
    image = _first(record, _IMAGE_KEYS)
    if not isinstance(image, str):
        return reject("missing_field", source, "no 'image' path", strict)
    captions = _first(record, _CAPTION_KEYS)
    if captions is None:
        return reject("missing_field", source, "no 'captions'/'caption'", strict)
    if not isinstance(captions, list):
        captions = [captions]
    extra = {}
    if isinstance(record.get("tags"), list):
        extra["tags"] = [str(t) for t in record["tags"]]
    image_id = record.get("image_id", Path(image).stem)
    return ImageCaptions(str(resolve(images_dir, image)), image_id, captions, source, extra)


def _jsonl_entries(path: Path, images_dir: Path, strict: bool, skips: list[Skipped]) -> list[ImageCaptions]:
    entries = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            source = f"{path}:{number}"
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                skips.append(reject("bad_encoding", source, "line is not UTF-8", strict))
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                skips.append(reject("malformed_json", source, str(err), strict))
                continue
            entry = _entry(record, images_dir, source, strict)
            (skips if isinstance(entry, Skipped) else entries).append(entry)
    return entries


def _csv_entries(path: Path, images_dir: Path, strict: bool, skips: list[Skipped]) -> list[ImageCaptions]:
    text = path.read_bytes().decode("utf-8-sig", errors="surrogateescape")
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if path.suffix == ".tsv" else ",")
    header = reader.fieldnames or []
    if not any(k in header for k in _IMAGE_KEYS) or not any(k in header for k in _CAPTION_KEYS):
        raise ConfigError(
            f"{path}: CSV header {header} needs an image column ({'/'.join(_IMAGE_KEYS)}) "
            f"and a caption column ({'/'.join(_CAPTION_KEYS)})"
        )
    entries = []
    for number, row in enumerate(reader, start=2):
        if None in row:  # more cells than header columns: a broken row
            skips.append(reject("bad_record", f"{path}:{number}", "more cells than header columns", strict))
            continue
        entry = _entry(dict(row), images_dir, f"{path}:{number}", strict)
        (skips if isinstance(entry, Skipped) else entries).append(entry)
    return entries


def read_manifest(
    manifest: Path, images_dir: Path, mode: CaptionMode = "pairs", max_chars: int = 2000, strict: bool = False
) -> SourceIndex:
    """Index a JSONL or CSV manifest; image paths are relative to ``images_dir``."""
    if not manifest.is_file():
        raise ConfigError(f"data.paths.manifest: {manifest}: file not found")
    skips: list[Skipped] = []
    if manifest.suffix in (".csv", ".tsv"):
        entries = _csv_entries(manifest, images_dir, strict, skips)
    else:
        entries = _jsonl_entries(manifest, images_dir, strict, skips)
    return group_captions(entries, mode, max_chars, strict, skips)
