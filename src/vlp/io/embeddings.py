"""Image embeddings on disk, in a layout numpy and FAISS users read without vlp.

A folder holds:

- ``embeddings-00000.npy``, ``embeddings-00001.npy``, ...: float32 ``(N_i, D)`` arrays, rows L2-normalised
  (so inner product is cosine similarity: ``faiss.IndexFlatIP`` takes them as they are);
- ``paths.txt``: one image key per line, the rows of the shards in order (shard 0's rows first);
- ``meta.json``: ``{"format", "model", "dim", "count", "dtype", "normalized", "shards": [{"file", "count"}],
  "paths", "skipped": [{"path", "error"}], "settings"}``.

``np.concatenate([np.load(f"{folder}/{s['file']}") for s in meta["shards"]])`` is the whole matrix.

Written shard by shard and resumable by shard: a shard's ``.npy`` is written under a temporary name
and renamed, then its paths are appended, then ``meta.json`` is replaced (also by a rename); only
what ``meta.json`` lists counts, so a run stopped at any point resumes after its last listed shard
(paths beyond the listed count are cut off, an unlisted shard file is written again).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vlp.config import ConfigError
from vlp.io.atomic import write_atomic

FORMAT = "vlp-embeddings/1"
META_NAME = "meta.json"
PATHS_NAME = "paths.txt"
SHARD_PATTERN = "embeddings-{:05d}.npy"


def _check_key(key: str) -> str:
    if "\n" in key or "\r" in key:  # paths.txt holds one key per line
        raise ValueError(f"embedding key {key!r}: a line break cannot be stored in {PATHS_NAME}")
    return key


class EmbeddingWriter:
    """Appends shards of embeddings to ``folder`` (see the module docstring).

    ``model`` and ``settings`` say what made the embeddings: a folder that holds embeddings of
    another model or settings is never appended to (nor is a non-empty folder without ``meta.json``);
    ``overwrite=True`` starts the folder afresh instead.

    ``done``: the keys the folder listed (embedded or skipped) when it was opened, which a resumed run leaves
    out. Shards written since are not added: a build of 10^6 images would hold every key a second time
    (~100 MB) for a set nobody reads after the run has chosen what to embed.
    """

    def __init__(
        self, folder: str | Path, model: str, settings: Mapping[str, Any] | None = None, overwrite: bool = False
    ) -> None:
        self.folder = Path(folder)
        self.meta: dict[str, Any] = {"format": FORMAT, "model": model, "dim": None, "count": 0, "dtype": "float32",
                                     "normalized": True, "shards": [], "paths": PATHS_NAME, "skipped": [],
                                     "settings": dict(settings or {})}  # fmt: skip
        if self.folder.exists() and not self.folder.is_dir():
            raise ConfigError(f"--out {self.folder}: exists and is not a folder")
        meta_path = self.folder / META_NAME
        if overwrite and meta_path.is_file():
            self._clear()
        elif meta_path.is_file():
            self._resume(read_meta(self.folder))
        elif self.folder.is_dir() and any(self.folder.iterdir()):
            raise ConfigError(f"--out {self.folder}: the folder is not empty and holds no {META_NAME} of vlp "
                              "embeddings; pass an empty or new folder")  # fmt: skip
        self.folder.mkdir(parents=True, exist_ok=True)
        paths = self.folder / PATHS_NAME
        kept = paths.read_text(encoding="utf-8").splitlines()[: self.meta["count"]] if paths.is_file() else []
        # a run stopped between appending paths and listing the shard: cut back to what meta.json lists
        write_atomic(paths, "".join(f"{k}\n" for k in kept))
        self.done = set(kept) | {s["path"] for s in self.meta["skipped"]}

    def _clear(self) -> None:
        meta = read_meta(self.folder)
        for shard in meta.get("shards", []):
            (self.folder / shard["file"]).unlink(missing_ok=True)
        for name in (PATHS_NAME, META_NAME):
            (self.folder / name).unlink(missing_ok=True)

    def _resume(self, found: dict[str, Any]) -> None:
        for key in ("model", "settings"):
            if found.get(key) != self.meta[key]:
                raise ConfigError(
                    f"--out {self.folder}: holds embeddings made with {key} {found.get(key)!r}, "
                    f"not {self.meta[key]!r}; "
                    "pass another folder to keep both, or --overwrite to replace them"
                )
        self.meta.update({k: found[k] for k in ("dim", "count", "shards", "skipped")})

    @property
    def count(self) -> int:
        return int(self.meta["count"])

    def write_shard(
        self, keys: Sequence[str], vectors: np.ndarray, skipped: Sequence[Mapping[str, str]] = ()
    ) -> Path | None:
        """Append one shard: ``vectors`` ``(len(keys), D)`` (stored float32, L2-normalised) and the
        ``{"path", "error"}`` records of the inputs left out since the last shard. None when only
        skipped inputs came (they are recorded all the same)."""
        vectors = np.asarray(vectors, dtype=np.float32)
        keys = list(keys)
        lines = "\n".join(keys) + "\n" if keys else ""
        if "\r" in lines or lines.count("\n") != len(keys):  # one scan of the joined text, not a check per key
            for key in keys:
                _check_key(key)
        if vectors.ndim != 2 or vectors.shape[0] != len(keys):
            raise ValueError(f"embeddings: expected ({len(keys)}, D) vectors for {len(keys)} keys, got {vectors.shape}")
        if keys and self.meta["dim"] not in (None, vectors.shape[1]):
            raise ValueError(f"embeddings: dimension {vectors.shape[1]} differs from the folder's {self.meta['dim']}")
        written = None
        if keys:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.maximum(norms, np.finfo(np.float32).tiny)
            written = self.folder / SHARD_PATTERN.format(len(self.meta["shards"]))
            # np.save straight into the temporary file: through a BytesIO the rows were copied three times
            write_atomic(written, lambda handle: np.save(handle, vectors))
            with (self.folder / PATHS_NAME).open("a", encoding="utf-8") as handle:
                handle.write(lines)
            self.meta["shards"].append({"file": written.name, "count": len(keys)})
            self.meta["dim"] = int(vectors.shape[1])
            self.meta["count"] += len(keys)
        self.meta["skipped"].extend({"path": str(s["path"]), "error": str(s["error"])} for s in skipped)
        write_atomic(self.folder / META_NAME, json.dumps(self.meta, indent=1) + "\n")
        return written


def read_meta(folder: str | Path) -> dict[str, Any]:
    """``meta.json`` of an embeddings folder, checked to be one."""
    path = Path(folder) / META_NAME
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ConfigError(f"{folder}: no {META_NAME}; not a folder of vlp embeddings") from err
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ConfigError(
            f"{path}: expected format {FORMAT!r}, got {meta.get('format') if isinstance(meta, dict) else meta!r}"
        )
    return meta


def read_embedding_shards(folder: str | Path) -> tuple[list[np.ndarray], list[str]]:
    """``(shards, keys)`` of an embeddings folder: each shard's ``(N_i, D)`` float32 rows memory-mapped (read
    from disk as they are used, never all held at once), and the keys of all rows in order."""
    folder = Path(folder)
    meta = read_meta(folder)
    shards = [np.load(folder / s["file"], mmap_mode="r", allow_pickle=False) for s in meta["shards"]]
    keys = (folder / PATHS_NAME).read_text(encoding="utf-8").splitlines()[: meta["count"]]
    count = sum(len(s) for s in shards)
    if count != len(keys):
        raise ConfigError(f"{folder}: {count} embeddings but {len(keys)} lines in {PATHS_NAME}")
    return shards, keys


def read_embeddings(folder: str | Path) -> tuple[np.ndarray, list[str]]:
    """``(vectors (N, D) float32, keys)`` of an embeddings folder, as meta.json lists them."""
    shards, keys = read_embedding_shards(folder)
    dim = read_meta(folder)["dim"] or 0
    # one array filled shard by shard: np.concatenate of loaded shards would hold every row twice
    vectors = np.empty((len(keys), dim), dtype=np.float32)
    start = 0
    for shard in shards:
        vectors[start : start + len(shard)] = shard
        start += len(shard)
    return vectors, keys


__all__ = ["EmbeddingWriter", "read_embedding_shards", "read_embeddings", "read_meta"]
