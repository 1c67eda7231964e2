"""Predictions as JSON lines, one per image, appended as they come and resumable.

``OUT.jsonl`` holds one object per input, each with its ``path`` (the input's key) and either the
task's fields or an ``error``. Beside it, ``OUT.jsonl.meta.json`` records what made the lines
(``{"format", "model", "settings"}``). Opening an existing file resumes it: the keys of its complete
lines count as done, and a last line cut off mid-write is dropped. A file is only appended to when
its meta file says it was made by the same model and settings; any other existing file (the
user's own, or predictions of something else) is left untouched and refused, unless ``overwrite``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

from vlp.config import ConfigError
from vlp.io.atomic import write_atomic

FORMAT = "vlp-predictions/1"


def meta_path(out: Path) -> Path:
    return out.with_name(out.name + ".meta.json")


def _difference(key: str, found: Any, expected: Any) -> str:
    """How the file's ``key`` (``model`` / ``settings``) differs from this run's, naming each setting that differs."""
    if key == "settings" and isinstance(found, dict):
        keys = sorted(k for k in {**found, **expected} if found.get(k) != expected.get(k))
        differ = "; ".join(f"{k}: {found.get(k)!r} in the file, {expected.get(k)!r} now" for k in keys)
        return f"other settings ({differ})"
    return f"{key} {found!r}, not {expected!r}"


class PredictionLog:
    """Appends prediction records to ``out`` (None = stdout, which cannot resume); see the module docstring."""

    def __init__(
        self,
        out: str | Path | None,
        model: str,
        settings: Mapping[str, Any],
        overwrite: bool = False,
        overwrite_flag: str = "--overwrite",
    ) -> None:
        self.overwrite_flag = overwrite_flag  # the command's flag named in a refusal
        self.out = Path(out) if out is not None else None
        self.meta = {"format": FORMAT, "model": model, "settings": json.loads(json.dumps(dict(settings)))}
        self.done: set[str] = set()
        self.resumed = 0
        if self.out is None:
            self.handle: IO[str] = sys.stdout
            return
        if self.out.is_dir():
            raise ConfigError(f"--out {self.out}: is a folder; pass a file name such as predictions.jsonl")
        exists = self.out.is_file() and self.out.stat().st_size > 0
        if exists and not overwrite:
            self._resume()
        self.out.parent.mkdir(parents=True, exist_ok=True)
        meta = meta_path(self.out)
        write_atomic(meta, json.dumps(self.meta, indent=1) + "\n")
        self.handle = self.out.open("a" if exists and not overwrite else "w", encoding="utf-8")

    def _resume(self) -> None:
        meta = meta_path(self.out)
        try:
            found = json.loads(meta.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            found = None
        if not isinstance(found, dict) or found.get("format") != FORMAT:
            raise ConfigError(
                f"--out {self.out}: the file exists and was not written by vlp predict (no {meta.name} beside it); "
                f"it is left as it is: pass another --out, or {self.overwrite_flag} to replace it"
            )
        for key in ("model", "settings"):
            if found.get(key) != self.meta[key]:
                made_with = _difference(key, found.get(key), self.meta[key])
                raise ConfigError(
                    f"--out {self.out}: holds predictions made with {made_with}; "
                    f"pass another --out to keep both, or {self.overwrite_flag} to replace them"
                )
        data = self.out.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]  # a line cut off mid-write is predicted again
        for number, line in enumerate(complete.decode("utf-8", errors="replace").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ConfigError(f"{self.out}:{number}: not a JSON line ({err}); the file is left as it is") from err
            if not isinstance(record, dict) or not isinstance(record.get("path"), str):
                raise ConfigError(f"{self.out}:{number}: a line without a 'path'; the file is left as it is")
            self.done.add(record["path"])
        if len(complete) < len(data):
            with self.out.open("r+b") as handle:
                handle.truncate(len(complete))
        self.resumed = len(self.done)

    def write(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Append records (each with a ``path``) and flush, so a stopped run loses at most a line."""
        lines = []
        for record in records:
            lines.append(json.dumps(record, ensure_ascii=False) + "\n")
            self.done.add(str(record["path"]))
        self.handle.write("".join(lines))
        self.handle.flush()

    def close(self) -> None:
        if self.handle is not sys.stdout:
            self.handle.close()


__all__ = ["PredictionLog", "meta_path"]
