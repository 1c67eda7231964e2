"""A user's images for inference: files, folders, globs, manifests and WebDataset shards -> one ordered list.

:func:`list_inputs` turns command-line inputs into :class:`ImageInput` records without decoding a
pixel (so a resumed run skips the done ones at no cost and a progress bar knows its total), and
:func:`read_input` decodes one of them; :func:`iter_images` does both, yielding ``(key, image or
ImageError)``. Each input is, by what it is:

- a folder: every image file below it (recursively; hidden files and folders left out), sorted;
- a glob (``photos/*.jpg``, ``**`` recursive): each match read as a file or folder;
- ``.jsonl`` / ``.csv`` / ``.tsv``: a manifest as vlp's manifest loader reads it (the image column
  ``image``/``filepath``/``path``/``file_name``, relative to the manifest's folder); captions are not needed;
- ``.tar``: a WebDataset shard; every image member is one input, keyed ``SHARD/MEMBER``;
- any other file: an image (a file that is not one becomes a ``not_an_image`` error at decoding).

A key appears once (the first time), so a folder and a glob over it do not predict an image twice.
Problems that belong to one image (a manifest line without an image, a truncated shard, a missing
file) become inputs that fail at :func:`read_input` with a skip reason; a command-line input that
names nothing (no such path, a glob without matches) is a :class:`~vlp.config.ConfigError`.
"""

from __future__ import annotations

import errno
import glob
import os
import stat
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from vlp.config import ConfigError
from vlp.data.image_io import ImageError, decode_image
from vlp.data.sources.common import IMAGE_SUFFIXES
from vlp.data.sources.manifest import manifest_images
from vlp.data.sources.webdataset import IMAGE_EXTENSIONS

MANIFEST_SUFFIXES = frozenset((".jsonl", ".csv", ".tsv"))
SHARD_SUFFIX = ".tar"
DEFAULT_MAX_PIXELS = 89_478_485  # PIL's own limit; DataConfig.max_image_pixels says the same


@dataclass(frozen=True)
class ImageInput:
    """One image to predict on: ``key`` names it in the output (a path, or ``SHARD/MEMBER``).

    ``path``: an image file; or ``shard`` + ``offset`` + ``size``: a member's bytes inside a tar;
    or ``error`` (``reason: detail``): an input already known to be unusable.
    """

    key: str
    path: Path | None = None
    shard: Path | None = None
    offset: int = 0
    size: int = 0
    error: str | None = None


_MISSING = (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP)  # the stat errors Path.exists calls "missing"


def _is_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def _hidden(name: str) -> bool:
    return name.startswith(".")  # .DS_Store, ._IMG_1.jpg (macOS resource forks), .git, .ipynb_checkpoints


def folder_images(folder: Path) -> list[Path]:
    """The image files below ``folder``, recursively, in sorted order (hidden entries left out)."""
    found = []
    for here, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not _hidden(d))
        found.extend(Path(here) / f for f in files if not _hidden(f) and Path(f).suffix.lower() in IMAGE_SUFFIXES)
    return sorted(found, key=lambda p: p.parts)


def _manifest_inputs(path: Path) -> list[ImageInput]:
    """The images a JSONL or CSV manifest names (relative to its folder), read by the manifest loader's reader; a
    record it would skip becomes an error input with the same reason."""
    return [
        ImageInput(str(image), path=image) if isinstance(image, Path) else ImageInput(source, error=image)
        for source, image in manifest_images(path)
    ]


def _member_ext(name: str) -> str:
    """A WebDataset member's extension: what follows the first dot of its file name (``000123.jpg`` -> jpg)."""
    base = name.rpartition("/")[2]
    return base.partition(".")[2].lower()


def _shard_inputs(path: Path) -> list[ImageInput]:
    """Every image member of a tar shard, in tar order, from its headers; a damaged shard ends with an error."""
    out: list[ImageInput] = []
    try:
        file_size = path.stat().st_size
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if not member.isfile() or _member_ext(member.name) not in IMAGE_EXTENSIONS:
                    continue
                if member.offset_data + member.size > file_size:
                    raise tarfile.ReadError(f"member {member.name} ends past the end of the file")
                key = f"{path}/{member.name}"
                out.append(ImageInput(key, shard=path, offset=member.offset_data, size=member.size))
    except (tarfile.TarError, EOFError, OSError) as err:
        # the images before the damage are kept; the shard's remainder is one error line
        out.append(ImageInput(f"{path}", error=f"truncated_shard: {err or type(err).__name__}"))
    return out


def _inputs_of_path(path: Path, named: bool, is_dir: bool | None = None) -> list[ImageInput]:
    """The inputs one existing path gives; ``named``: the user typed it (not a glob match); ``is_dir``:
    what the caller's stat said, else looked up."""
    if path.is_dir() if is_dir is None else is_dir:
        return [ImageInput(str(p), path=p) for p in folder_images(path)]
    suffix = path.suffix.lower()
    if suffix in MANIFEST_SUFFIXES:
        return _manifest_inputs(path)
    if suffix == SHARD_SUFFIX:
        return _shard_inputs(path)
    if named or suffix in IMAGE_SUFFIXES:  # a typed path is taken as an image whatever its name
        return [ImageInput(str(path), path=path)]
    return []


def list_inputs(specs: Sequence[str | Path], folders: set[str] | None = None) -> list[ImageInput]:
    """The images ``specs`` name, in order, each key once (see the module docstring). ``folders``: a set that
    receives the specs (as ``str(spec)``) that are folders, for a caller that would otherwise stat them again."""
    if isinstance(specs, (str, Path)):
        specs = [specs]
    found: list[ImageInput] = []
    for spec in specs:
        text = str(spec)
        path = spec if isinstance(spec, Path) else Path(text)
        # one stat says both whether it exists and whether it is a folder (Path.exists + is_dir made two)
        try:
            mode: int | None = os.stat(text).st_mode
        except ValueError:  # a name the OS refuses (a NUL byte): missing, as Path.exists says
            mode = None
        except OSError as err:
            if err.errno not in _MISSING:
                raise  # e.g. permission denied: not "no such file"
            mode = None
        if mode is not None:
            is_dir = stat.S_ISDIR(mode)
            if is_dir and folders is not None:
                folders.add(text)
            items = _inputs_of_path(path, named=True, is_dir=is_dir)
            if not items and is_dir:
                shards = sorted(path.rglob(f"*{SHARD_SUFFIX}"))
                hint = f"; it holds {len(shards)} .tar shard(s): pass them as {path}/*.tar" if shards else ""
                raise ConfigError(f"input {text}: the folder holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})"
                                  f"{hint}")  # fmt: skip
        elif _is_glob(text):
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                raise ConfigError(f"input {text}: the glob matches nothing")
            items = [item for match in matches for item in _inputs_of_path(Path(match), named=False)]
            if not items:
                raise ConfigError(f"input {text}: the glob matches {len(matches)} path(s) but no image, manifest or "
                                  "shard")  # fmt: skip
        else:
            raise ConfigError(f"input {text}: no such file or folder (expected images, folders, globs, .jsonl/.csv "
                              "manifests or .tar shards)")  # fmt: skip
        found.extend(items)
    seen: set[str] = set()
    unique = []
    for item in found:
        if item.key not in seen:
            seen.add(item.key)
            unique.append(item)
    return unique


def read_input(
    item: ImageInput, draft_size: tuple[int, int] | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """The upright RGB image of ``item`` (:func:`vlp.data.image_io.decode_image`; ``draft_size`` lets a
    JPEG decode reduced, as the data loaders do); :class:`ImageError` names why it cannot be read."""
    if item.error is not None:
        reason, _, detail = item.error.partition(": ")
        raise ImageError(reason, detail)
    if item.shard is not None:
        try:
            with item.shard.open("rb") as handle:
                handle.seek(item.offset)
                data = handle.read(item.size)
        except OSError as err:
            raise ImageError("missing_file", f"{item.shard}: {err}") from err
        if len(data) != item.size:
            raise ImageError("truncated_shard", f"{item.size - len(data)} bytes missing")
        return decode_image(data, draft_size, max_pixels)[0]
    return decode_image(item.path, draft_size, max_pixels)[0]


def iter_images(
    specs: Sequence[str | Path], draft_size: tuple[int, int] | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Iterator[tuple[str, Image.Image | ImageError]]:
    """``(key, image)`` for every input of ``specs``, or ``(key, ImageError)`` for one that cannot be read."""
    for item in list_inputs(specs):
        try:
            yield item.key, read_input(item, draft_size, max_pixels)
        except ImageError as err:
            yield item.key, err


__all__ = [
    "IMAGE_SUFFIXES",
    "ImageInput",
    "folder_images",
    "iter_images",
    "list_inputs",
    "read_input",
]
