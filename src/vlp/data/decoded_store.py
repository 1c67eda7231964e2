"""A store of decoded images: every image file of a data set decoded once, kept as uint8 pixels on disk.

``data.decoded_cache: DIR`` turns it on. Training reads each image once per caption per epoch (five
times an epoch for COCO-style captions); decoding a JPEG costs more than everything else a sample
needs, so for data sets whose decoded pixels fit on disk (and, for speed, in the page cache) the
store decodes each file once and later reads the pixels back from one memory-mapped file.

It is exact: the store holds what :func:`vlp.data.image_io.decode_image` returns (the upright RGB
image after JPEG draft mode, and the full-resolution size annotations refer to), so the transform
that follows, random crops and flips included, sees the same pixels and draws the same random numbers;
an image that fails to decode is stored as its skip reason, and skipped (or raised, ``strict``) as before.

What it is keyed by, and when it is rebuilt:

- the file name is ``vlp-decoded-<hash>.json`` (index) + ``vlp-decoded-<hash>-<build>.u8`` (pixels),
  where ``<hash>`` covers the list of image paths and the deterministic part of the transform that the
  decode depends on (the draft size, the pixel limit): another transform or another data set gets
  another store beside it;
- the index records every file's size and modification time; when one of them differs (or a file
  appears or vanishes) the store is decoded again and replaces the old one (index written last, by an
  atomic rename, so a reader never sees half a store).

Only files named ``vlp-decoded-*`` are ever written or removed in ``DIR``; an index of that name that
was not written by this module is an error, never overwritten. There is no default folder: the user
names it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no flock; concurrent builders then each write a whole store, the last one wins
    fcntl = None

import numpy as np
from PIL import Image

from vlp.data.image_io import ImageError, decode_image

logger = logging.getLogger("vlp.data")

FORMAT = "vlp-decoded-store"
VERSION = 1
PREFIX = "vlp-decoded-"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` across processes (``flock``; no lock where the OS has none)."""
    with path.open("a") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes, an exception included
        yield


def _stat(path: str) -> list[int]:
    """``[size, mtime_ns]`` of ``path``; ``[-1, -1]`` when it does not exist (decoding then says why)."""
    try:
        st = os.stat(path)
    except OSError:
        return [-1, -1]
    return [st.st_size, st.st_mtime_ns]


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode("utf-8")).hexdigest()


class DecodedStore:
    """The decoded pixels of ``paths`` under ``folder`` (see the module docstring); built when missing or stale.

    >>> store = DecodedStore("cache/", ["a.jpg", "b.png"], draft_size=(224, 224))
    >>> image, full_size = store.decode("a.jpg")      # what decode_image("a.jpg", (224, 224)) returns
    """

    def __init__(
        self,
        folder: str | Path,
        paths: list[str],
        draft_size: tuple[int, int] | None,
        max_pixels: int = 89_478_485,
    ) -> None:
        self.folder = Path(folder)
        self.draft_size = tuple(draft_size) if draft_size is not None else None
        self.max_pixels = max_pixels
        unique = sorted(set(paths))
        settings = {"format": FORMAT, "version": VERSION, "draft_size": self.draft_size, "max_pixels": max_pixels}
        self.name = PREFIX + _digest({**settings, "paths": unique})[:20]
        self.index_path = self.folder / f"{self.name}.json"
        self._files = {p: _stat(p) for p in unique}
        self._key = _digest({**settings, "files": self._files})
        self._pixels: np.ndarray | None = None
        self.built = False  # True when this instance decoded the images (False: an up-to-date store was found)
        if self.folder.exists() and not self.folder.is_dir():
            raise ValueError(f"data.decoded_cache: {self.folder} exists and is not a folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        # one builder at a time (the ranks of a run, two runs on one data set): the others wait, then
        # find the store up to date
        with _locked(self.folder / f"{self.name}.lock"):
            index = self._read_index()
            if index is None:
                index = self._build(unique)
                self.built = True
            self.pixels_path = self.folder / index["pixels"]
            self._map()  # mapped now: a later rebuild by another process may remove the file, not this view
        # path -> (offset, height, width, full width, full height) or (reason, detail)
        self._entries: dict[str, list] = index["entries"]

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, path: object) -> bool:
        return path in self._entries

    def _map(self) -> np.ndarray:
        if self._pixels is None:
            size = self.pixels_path.stat().st_size
            self._pixels = (
                np.memmap(self.pixels_path, dtype=np.uint8, mode="r") if size else np.zeros(0, dtype=np.uint8)
            )
        return self._pixels

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers (spawn) map the file themselves
        state = dict(self.__dict__)
        state["_pixels"] = None
        return state

    def array(self, path: str) -> tuple[np.ndarray, tuple[int, int]]:
        """``(H, W, 3)`` uint8 pixels of ``path`` (a read-only view) and its full-resolution (width, height).

        Raises :class:`ImageError` with the reason the decode gave, for a file that did not decode.
        """
        entry = self._entries[path]
        if isinstance(entry[0], str):
            raise ImageError(entry[0], entry[1])
        offset, height, width, full_w, full_h = entry
        pixels = self._map()[offset : offset + height * width * 3].reshape(height, width, 3)
        return pixels, (full_w, full_h)

    def decode(self, path: str) -> tuple[Image.Image, tuple[int, int]]:
        """What ``decode_image(path, draft_size, max_pixels)`` returns, from the stored pixels."""
        pixels, full = self.array(path)
        return Image.fromarray(np.array(pixels)), full

    # ------------------------------------------------------------------ building
    def _read_index(self) -> dict[str, Any] | None:
        """The index if it is current (same files, sizes, times and settings); None when it must be built."""
        if not self.index_path.exists():
            return None
        try:
            index = json.loads(self.index_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(
                f"data.decoded_cache: {self.index_path} is not a readable decoded-image index ({err}); "
                "it is not overwritten: remove it or name another folder"
            ) from err
        if not isinstance(index, dict) or index.get("format") != FORMAT:
            raise ValueError(
                f"data.decoded_cache: {self.index_path} was not written by vlp's decoded-image store "
                f'(no "format": "{FORMAT}"); it is not overwritten: remove it or name another folder'
            )
        if index.get("key") != self._key:
            changed = [p for p, s in self._files.items() if index.get("files", {}).get(p) != s]
            logger.info(
                "%s: %s; decoding again", self.index_path,
                f"{len(changed)} image file(s) changed, e.g. {changed[0]}" if changed else "settings changed",
            )  # fmt: skip
            return None
        pixels = self.folder / str(index.get("pixels", ""))
        if not pixels.is_file() or pixels.stat().st_size != index.get("bytes"):
            logger.info("%s: its pixel file %s is missing or incomplete; decoding again", self.index_path, pixels)
            return None
        return index

    def _build(self, paths: list[str]) -> dict[str, Any]:
        logger.info("decoding %d image(s) once into %s", len(paths), self.folder)
        for stale in self.folder.glob(f"{self.name}-*.tmp"):  # an interrupted build's (we hold the lock)
            stale.unlink(missing_ok=True)
        build = uuid.uuid4().hex[:12]
        pixels_name = f"{self.name}-{build}.u8"
        tmp_pixels = self.folder / f"{pixels_name}.tmp"
        entries: dict[str, list] = {}
        offset = 0
        try:
            with tmp_pixels.open("wb") as out:
                for path in paths:
                    try:
                        image, full = decode_image(path, self.draft_size, self.max_pixels)
                    except ImageError as err:
                        entries[path] = [err.reason, err.detail]
                        continue
                    data = np.asarray(image, dtype=np.uint8)
                    out.write(np.ascontiguousarray(data).tobytes())
                    entries[path] = [offset, data.shape[0], data.shape[1], int(full[0]), int(full[1])]
                    offset += data.size
        except BaseException:  # Ctrl-C, a full disk, ...: a data set's worth of pixels must not stay behind
            tmp_pixels.unlink(missing_ok=True)
            raise
        os.replace(tmp_pixels, self.folder / pixels_name)
        index = {"format": FORMAT, "version": VERSION, "key": self._key, "draft_size": self.draft_size,
                 "max_pixels": self.max_pixels, "files": self._files, "pixels": pixels_name, "bytes": offset,
                 "entries": entries}  # fmt: skip
        tmp_index = self.folder / f"{self.name}-{build}.json.tmp"
        tmp_index.write_text(json.dumps(index), encoding="utf-8")
        os.replace(tmp_index, self.index_path)  # the commit: readers see the old store or the whole new one
        for old in self.folder.glob(f"{self.name}-*.u8"):  # the pixels of the store this one replaced
            if old.name != pixels_name:
                old.unlink(missing_ok=True)
        return index
