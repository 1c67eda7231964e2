"""Caption corpora for tokenizer training: plain text, Karpathy/ALBEF/COCO caption JSON, or JSONL.

Formats (what each file holds):

- ``.txt`` (or any other suffix): one caption per line; blank lines are skipped.
- ``.json``: Karpathy split ``{"images": [{"sentences": [{"raw": ...}]}]}``,
  ALBEF-style ``[{"caption": str or [str, ...]}]`` (``"text"`` accepted too) or
  COCO captions ``{"annotations": [{"caption": ...}]}``.
- ``.jsonl``: one object per line with a ``"caption"`` or ``"text"`` (str or list of str).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_JSON_FORMATS = (
    'Karpathy {"images": [{"sentences": [{"raw": ...}]}]}, ALBEF [{"caption": ...}] '
    'or COCO {"annotations": [{"caption": ...}]}'
)


def _captions_of(record: Any, where: str) -> list[str]:
    """The caption(s) of one ALBEF/JSONL record: its ``caption`` or ``text``, a string or a list of strings."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected an object with a 'caption' or 'text' key, got {type(record).__name__}")
    key = "caption" if "caption" in record else "text" if "text" in record else None
    if key is None:
        raise ValueError(f"{where}: has no 'caption' or 'text' key (keys: {', '.join(sorted(record)) or 'none'})")
    value = record[key]
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ValueError(f"{where}.{key}: expected a string or a list of strings, got {value!r:.80}")
    return values


def _karpathy(data: dict, path: Path) -> list[str]:
    out = []
    for i, image in enumerate(data["images"]):
        sentences = image.get("sentences") if isinstance(image, dict) else None
        if not isinstance(sentences, list):
            raise ValueError(f"{path}: images[{i}] has no 'sentences' list (Karpathy split format)")
        for j, sentence in enumerate(sentences):
            raw = sentence.get("raw") if isinstance(sentence, dict) else None
            if raw is None and isinstance(sentence, dict) and isinstance(sentence.get("tokens"), list):
                raw = " ".join(sentence["tokens"])
            if not isinstance(raw, str):
                raise ValueError(f"{path}: images[{i}].sentences[{j}] has no 'raw' caption string")
            out.append(raw)
    return out


def _read_json(path: Path) -> list[str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: is not valid JSON ({err}); expected {_JSON_FORMATS}") from err
    if isinstance(data, dict) and isinstance(data.get("images"), list) and "annotations" not in data:
        return _karpathy(data, path)
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        records, where = data["annotations"], f"{path}: annotations"
    elif isinstance(data, list):
        records, where = data, f"{path}: record"
    else:
        keys = ", ".join(sorted(data)) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path}: unrecognized caption JSON (top level: {keys}); expected {_JSON_FORMATS}")
    out = []
    for i, record in enumerate(records):
        out.extend(_captions_of(record, f"{where}[{i}]"))
    return out


def _read_jsonl(path: Path) -> list[str]:
    out = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: is not valid JSON ({err})") from err
            out.extend(_captions_of(record, f"{path}:{number}"))
    return out


def read_captions(path: str | Path) -> list[str]:
    """All captions in ``path`` (format chosen by suffix, see the module doc); blank captions are dropped.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file (and
    record) for content that fits none of the formats or holds no caption.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: caption file not found")
    try:
        if path.suffix == ".json":
            captions = _read_json(path)
        elif path.suffix == ".jsonl":
            captions = _read_jsonl(path)
        else:
            captions = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: is not UTF-8 text ({err.reason}); expected captions") from err
    captions = [c.strip() for c in captions if c.strip()]
    if not captions:
        raise ValueError(f"{path}: holds no captions")
    return captions
