"""The on-disk search index of ``vlp index build`` and its vector search: ``index.json``, the exact
(FAISS ``IndexFlatIP`` or numpy) and IVF-PQ searches, and the choice between them
(see :mod:`vlp.tasks.retrieval.index` for the folder layout)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vlp.config import ConfigError
from vlp.io.embeddings import read_meta

FORMAT = "vlp-index/1"
INDEX_NAME, FAISS_NAME, CAPTIONS_NAME = "index.json", "index.faiss", "captions.jsonl"
AUTO_EXACT_BELOW = 100_000  # exact search of 10^5 x 512 floats is a few ms a query; IVF-PQ pays off above
INDEX_TYPES = ("auto", "flat", "ivfpq")
FAISS_HINT = "pip install 'vlp[faiss]' (or pip install faiss-cpu)"


def import_faiss(needed_for: str | None = None) -> Any:
    """The faiss module; None when it is missing, or a ConfigError saying how to install it (``needed_for``)."""
    try:  # an optional dependency (the faiss extra)
        import faiss
    except ImportError as err:
        if needed_for is None:
            return None
        raise ConfigError(f"{needed_for} needs faiss: {FAISS_HINT}; an exact index (--index-type flat) is "
                          "searched with numpy without it") from err  # fmt: skip
    return faiss


@dataclass
class IndexOptions:
    """How ``vlp index build`` indexes; 0 = chosen from the count and dimension (see :func:`index_plan`)."""

    index_type: str = "auto"
    nlist: int = 0
    m: int = 0
    nbits: int = 8
    nprobe: int = 0
    refine: int = 10  # IVF-PQ: re-score refine * k candidates exactly; 0 = the quantized scores as they are
    exact_below: int = AUTO_EXACT_BELOW


def index_plan(count: int, dim: int, options: IndexOptions) -> dict[str, Any]:
    """The index type and parameters for ``count`` vectors of ``dim``: ``nlist`` ~ 4 sqrt(N) (at least 39
    training points a list, FAISS's floor), ``m`` the largest divisor of ``dim`` up to ``dim / 2`` (2 dims
    a byte: text queries against an index of image embeddings reached recall@10 0.958 by id with m = dim / 2
    and 0.900 with dim / 4, re-scored; benchmarks/bench_search.py),
    ``nprobe`` = nlist / 8 (at least 16)."""
    if options.index_type not in INDEX_TYPES:
        raise ConfigError(f"--index-type: {options.index_type!r} is not one of {', '.join(INDEX_TYPES)}")
    kind = options.index_type
    if kind == "auto":
        kind = "flat" if count < options.exact_below else "ivfpq"
    plan: dict[str, Any] = {"type": kind}
    if kind == "flat":
        return plan
    nlist = options.nlist or max(1, min(int(4 * math.sqrt(count)), count // 39))
    m = options.m or max(d for d in range(1, max(1, dim // 2) + 1) if dim % d == 0)
    if dim % m:
        raise ConfigError(f"--m: {m} sub-quantizers must divide the embedding dimension {dim}")
    if not 1 <= options.nbits <= 16:
        raise ConfigError(f"--nbits: must lie in [1, 16], got {options.nbits}")
    needed = max(nlist, 2**options.nbits)
    if count < needed:
        raise ConfigError(f"IVF-PQ with nlist {nlist} and {options.nbits}-bit codes needs at least {needed} images "
                          f"to train on; the index has {count}: use --index-type flat")  # fmt: skip
    nprobe = options.nprobe or min(nlist, max(16, nlist // 8))
    return {**plan, "nlist": nlist, "m": m, "nbits": options.nbits, "nprobe": nprobe, "refine": options.refine}


class OpenedIndex:
    """An index folder opened for search: ``paths``, ``captions`` (or None), ``dim``, ``roots``, ``info``
    (``index.json``); :meth:`search` takes query embeddings. ``report``: what the build did (when built)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.info = read_index_info(self.folder)
        meta = read_meta(self.folder)
        self.dim = int(meta["dim"])
        self.paths = (self.folder / "paths.txt").read_text(encoding="utf-8").splitlines()[: meta["count"]]
        self.shards = [np.load(self.folder / s["file"], mmap_mode="r") for s in meta["shards"]]
        self.starts = np.cumsum([0] + [len(s) for s in self.shards])
        if self.starts[-1] != len(self.paths) or len(self.paths) != self.info["count"]:
            raise ConfigError(f"{self.folder}: {self.starts[-1]} embeddings, {len(self.paths)} paths, index.json says "
                              f"{self.info['count']}; rebuild it with vlp index build")  # fmt: skip
        captions = self.folder / CAPTIONS_NAME
        self.captions = [json.loads(line) for line in captions.read_text(encoding="utf-8").splitlines()] \
            if captions.is_file() else None  # fmt: skip
        self.roots = list(self.info.get("roots") or [])
        self.type = self.info["type"]
        self.nprobe = int(self.info.get("nprobe") or 0)
        self.report: dict[str, Any] = {}
        self._exact: Any = None
        self._ivf: Any = None
        if self.type == "ivfpq":
            faiss = import_faiss("searching an IVF-PQ index")
            self._ivf = faiss.read_index(str(self.folder / FAISS_NAME))

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def backend(self) -> str:
        return "faiss" if self._ivf is not None or import_faiss() is not None else "numpy"

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """The stored embeddings of row ``ids`` (read from the memory-mapped shards)."""
        ids = np.asarray(ids, dtype=np.int64)
        shard = np.searchsorted(self.starts, ids, side="right") - 1
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        for s in np.unique(shard):
            picked = shard == s
            out[picked] = self.shards[s][ids[picked] - self.starts[s]]
        return out

    def vectors(self) -> np.ndarray:
        """Every embedding ``(N, D)`` in row order, in memory."""
        return np.ascontiguousarray(np.concatenate(self.shards) if self.shards else np.zeros((0, self.dim)))

    def search(self, queries: np.ndarray, k: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(scores (Q, k), ids (Q, k))`` of the best rows per query, best first; ids -1 pad short results."""
        queries = np.ascontiguousarray(np.asarray(queries, dtype=np.float32).reshape(-1, self.dim))
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if self._ivf is None:
            return self._search_exact(queries, k)
        self._ivf.nprobe = int(nprobe or self.nprobe)
        refine = int(self.info.get("refine") or 0)
        scores, ids = self._ivf.search(queries, k * refine if refine else k)
        if not refine:
            return scores, ids
        out_s, out_i = np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64)
        for q, (row, query) in enumerate(zip(ids, queries)):
            row = row[row >= 0]
            exact = self.rows(row) @ query  # the quantized scores only chose the shortlist
            order = np.argsort(-exact, kind="stable")[:k]
            out_s[q, : len(order)], out_i[q, : len(order)] = exact[order], row[order]
        return out_s, out_i

    def _search_exact(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        faiss = import_faiss()
        if self._exact is None:
            vectors = self.vectors().astype(np.float32)
            if faiss is not None:
                self._exact = faiss.IndexFlatIP(self.dim)
                self._exact.add(vectors)
            else:
                self._exact = vectors
        if faiss is not None:
            return self._exact.search(queries, k)
        return exact_search(self._exact, queries, k)


def exact_search(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top ``k`` with numpy: ``(scores, ids)``, best first, padded with -inf / -1."""
    count = len(vectors)
    sims = queries @ vectors.T
    take = min(k, count)
    top = (
        np.argpartition(-sims, take - 1, axis=1)[:, :take]
        if take < count
        else np.tile(np.arange(count), (len(sims), 1))
    )
    order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
    ids = np.take_along_axis(top, order, axis=1)
    scores = np.take_along_axis(sims, ids, axis=1).astype(np.float32)
    pad = k - take
    if pad:
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
    return scores, ids.astype(np.int64)


def read_index_info(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / INDEX_NAME
    if not path.is_file():
        raise ConfigError(f"{folder}: no {INDEX_NAME}; not a finished `vlp index build` folder (rerun the build "
                          "to finish it)")  # fmt: skip
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise ConfigError(f"{path}: expected format {FORMAT!r}")
    return info


def is_index_folder(folder: str | Path) -> bool:
    """True for a finished ``vlp index build`` folder."""
    try:
        read_index_info(folder)
    except ConfigError:
        return False
    return True


def open_index(folder: str | Path) -> OpenedIndex:
    """Open an index folder for :func:`search` (an IVF-PQ index needs faiss)."""
    return OpenedIndex(folder)


__all__ = [
    "AUTO_EXACT_BELOW",
    "IndexOptions",
    "OpenedIndex",
    "exact_search",
    "import_faiss",
    "index_plan",
    "is_index_folder",
    "open_index",
    "read_index_info",
]
