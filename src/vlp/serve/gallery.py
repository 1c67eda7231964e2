"""The searchable images behind ``vlp serve --index DIR``: vectors, their files, and which files may be shown.

A client never sees a file path it could turn into a request: results carry the index id, a name
relative to its indexed root and an ``/image/{id}`` URL. Before a file is named or sent its path is
resolved (symlinks followed) and must lie under one of the indexed roots; a listed path with ``..``
in it, a symlink out of the roots or a file that is gone is never served.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vlp.io.embeddings import META_NAME, read_embeddings
from vlp.tasks.retrieval.index import is_index_folder, open_index


class Gallery:
    """Image embeddings ``(N, D)`` (L2-normalised float32) with their paths, captions and allowed roots.

    ``search`` is exact (one matrix product) unless an ``ann`` object with ``search(queries, k) ->
    (scores, ids)`` (a FAISS index, or the retrieval index's own) is given.
    """

    def __init__(
        self,
        vectors: np.ndarray | None,
        paths: Sequence[str],
        roots: Sequence[str | Path] | None = None,
        captions: Sequence[str | None] | None = None,
        ann: Any = None,
        dim: int | None = None,
    ) -> None:
        if vectors is None and ann is None:
            raise ValueError("gallery: pass the vectors or a search index")
        if vectors is not None:
            vectors = np.ascontiguousarray(vectors, dtype=np.float32)
            if vectors.ndim != 2 or len(vectors) != len(paths):
                raise ValueError(f"gallery: {vectors.shape} vectors for {len(paths)} paths; expected ({len(paths)}, D)")
        self.vectors = vectors
        self.ann = ann
        self.dim = int(dim if dim is not None else vectors.shape[1])
        # numpy arrays of str: a 10k-result lookup is one fancy index, not a Python loop over the table
        self.paths = np.asarray([str(p) for p in paths], dtype=object)
        self.captions = np.asarray(list(captions) if captions is not None else [None] * len(paths), dtype=object)
        listed = [os.path.abspath(p) for p in self.paths] if len(self.paths) else []
        if roots is None:
            roots = [os.path.commonpath(listed)] if listed else []
            roots = [r if os.path.isdir(r) else os.path.dirname(r) for r in roots]
        self.roots = [Path(r).resolve() for r in roots]
        self._root_prefixes = [os.path.join(str(r), "") for r in self.roots]  # "/a/b/": "/a/bc" is not under it
        self._named: dict[int, tuple[Path, str] | None] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, ids)`` of the ``k`` best images per query row, best first (ids -1 pad short results)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"query embeddings have shape {queries.shape}; the index holds {self.dim}-d vectors")
        k = min(k, len(self))
        if self.ann is not None:
            scores, ids = self.ann.search(queries, k)
            return np.asarray(scores, dtype=np.float32), np.asarray(ids, dtype=np.int64)
        sims = queries @ self.vectors.T
        if k < len(self):
            top = np.argpartition(-sims, k - 1, axis=1)[:, :k]  # O(N) selection, then sort only the k
        else:
            top = np.broadcast_to(np.arange(len(self)), sims.shape).copy()
        order = np.take_along_axis(sims, top, axis=1).argsort(axis=1)[:, ::-1]
        ids = np.take_along_axis(top, order, axis=1)
        return np.take_along_axis(sims, ids, axis=1), ids

    def file(self, index: int) -> tuple[Path, str] | None:
        """``(resolved path, name relative to its root)`` of image ``index`` when it may be served, else None."""
        if not 0 <= index < len(self):
            return None
        if index not in self._named:
            self._named[index] = self._check(str(self.paths[index]))
        return self._named[index]

    def _check(self, listed: str) -> tuple[Path, str] | None:
        # os.path rather than pathlib: this runs once per result on a cold 10k-result answer
        if ".." in listed.replace("\\", "/").split("/"):
            return None  # a listed path that climbs out is refused before it is resolved
        resolved = os.path.realpath(listed)
        for root in self._root_prefixes:
            if resolved.startswith(root) and os.path.isfile(resolved):
                return Path(resolved), resolved[len(root) :].replace(os.sep, "/")
        return None

    def results(self, scores: np.ndarray, ids: np.ndarray) -> list[dict[str, Any]]:
        """One result per servable id: ``{"id", "score", "name", "url", "caption"}`` (unsafe ids left out)."""
        keep = ids >= 0
        scores, ids = scores[keep], ids[keep]
        captions = self.captions[ids]
        out = []
        for i, score, caption in zip(ids.tolist(), scores.tolist(), captions.tolist()):
            found = self.file(i)
            if found is not None:
                out.append({"id": i, "score": round(score, 6), "name": found[1], "url": f"/image/{i}",
                            "caption": caption})  # fmt: skip
        return out


def open_gallery(folder: str | Path, roots: Sequence[str | Path] | None = None) -> Gallery:
    """The gallery of a ``vlp index build`` folder (searched through its own index) or of an embeddings
    folder as ``vlp predict embed`` writes it (:mod:`vlp.io.embeddings`; searched exactly).

    Relative image paths are taken from the current folder, as ``vlp predict embed`` was given them.
    ``roots``: the folders whose images may be shown; default: the index's own, else the deepest folder
    holding every listed image.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--index: {folder} is not a folder")
    opened = _retrieval_index(folder, roots)
    if opened is not None:
        return opened
    if not (folder / META_NAME).is_file():
        raise FileNotFoundError(
            f"--index: {folder} has no {META_NAME}; expected a `vlp index build` folder or `vlp predict embed` output"
        )
    vectors, keys = read_embeddings(folder)
    return Gallery(vectors, [os.path.abspath(k) for k in keys], roots or None)


def _retrieval_index(folder: Path, roots: Sequence[str | Path] | None) -> Gallery | None:
    """A ``vlp index build`` folder as a gallery searched by its own index (None when ``folder`` is not one)."""
    if not is_index_folder(folder):
        return None
    opened = open_index(folder)
    listed = [os.path.abspath(p) for p in opened.paths]  # relative keys: from the folder the build ran in
    return Gallery(None, listed, roots or opened.roots or None, opened.captions, ann=opened, dim=opened.dim)


__all__ = ["Gallery", "open_gallery"]
