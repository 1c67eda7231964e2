"""WebDataset tar shards in the img2dataset layout, read without the webdataset package.

A shard is a plain tar whose members are grouped into samples by key: the
member's path up to the first dot of its file name (``000000123.jpg``,
``000000123.txt``, ``000000123.json`` form sample ``000000123``). A sample
needs an image (jpg/jpeg/png/webp/bmp/tif/ppm/pgm/gif: ``common.IMAGE_SUFFIXES``) and a caption (``.txt``, or a
``caption`` in ``.json``).

Shards are scanned header by header (:func:`scan_shard`): the scan records
where each member's bytes are, and the bytes are read only for the samples a
worker actually decodes, so nothing holds a shard in memory and skipping ahead
on resume costs only header reads. A shard that ends inside a member, or
without the end-of-archive blocks, yields the samples before that point and
then one ``truncated_shard`` record.
"""

from __future__ import annotations

import glob
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from vlp.config import ConfigError
from vlp.data.skipping import Skipped
from vlp.data.sources.common import IMAGE_SUFFIXES

IMAGE_EXTENSIONS = tuple(suffix[1:] for suffix in IMAGE_SUFFIXES)  # a member's extension has no dot
_BRACES = re.compile(r"\{(\d+)\.\.(\d+)\}")


@dataclass(frozen=True)
class TarSample:
    """Where one sample's members are: ``members[ext] = (offset, size)`` inside ``shard``."""

    shard: str
    key: str
    members: dict[str, tuple[int, int]] = field(hash=False)

    def image_ext(self) -> str | None:
        return next((ext for ext in IMAGE_EXTENSIONS if ext in self.members), None)


def _expand_braces(pattern: str) -> list[str]:
    """``a-{000..002}.tar`` -> ``a-000.tar, a-001.tar, a-002.tar`` (zero padding kept); nested ranges too."""
    match = _BRACES.search(pattern)
    if match is None:
        return [pattern]
    lo, hi = match.group(1), match.group(2)
    width = len(lo)
    out = []
    for n in range(int(lo), int(hi) + 1):
        out.extend(_expand_braces(pattern[: match.start()] + str(n).zfill(width) + pattern[match.end() :]))
    return out


def expand_shards(spec: str, root: Path) -> list[Path]:
    """Shard paths from a spec: a folder (its ``*.tar``), a glob, brace ranges, or several joined by ``::``."""
    shards: list[Path] = []
    for part in spec.split("::"):
        for item in _expand_braces(part):
            path = Path(item) if Path(item).is_absolute() else root / item
            if path.is_dir():
                shards.extend(sorted(path.glob("*.tar")))
            elif any(ch in item for ch in "*?["):
                shards.extend(Path(p) for p in sorted(glob.glob(str(path))))
            else:
                shards.append(path)
    missing = [str(p) for p in shards if not p.is_file()]
    if missing:
        raise ConfigError(f"data.paths.shards: {len(missing)} shard(s) not found, e.g. {missing[0]}")
    if not shards:
        raise ConfigError(f"data.paths.shards: {spec!r} matches no .tar file under {root}")
    return shards


def _split_name(name: str) -> tuple[str, str]:
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    key = f"{folder}/{stem}" if folder else stem
    return key, ext.lower() if dot else ""


def _finish(current: TarSample | None, out: list[TarSample | Skipped]) -> None:
    if current is None:
        return
    if current.image_ext() is None or not ({"txt", "json"} & set(current.members)):
        out.append(Skipped("missing_field", f"{current.shard}:{current.key}", "needs an image and a .txt or .json"))
    else:
        out.append(current)


def scan_shard(path: str | Path) -> list[TarSample | Skipped]:
    """The samples of one shard, in tar order, from its headers alone (see the module docstring)."""
    path = Path(path)
    shard = str(path)
    out: list[TarSample | Skipped] = []
    current: TarSample | None = None
    try:
        file_size = path.stat().st_size
        if file_size == 0:
            return [Skipped("truncated_shard", shard, "zero-byte shard")]
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                if member.offset_data + member.size > file_size:
                    raise tarfile.ReadError(f"member {member.name} ends past the end of the file")
                key, ext = _split_name(member.name)
                if current is None or key != current.key:
                    _finish(current, out)
                    current = TarSample(shard, key, {})
                current.members[ext] = (member.offset_data, member.size)
            end = tar.offset
        with path.open("rb") as handle:  # a complete tar ends with zero blocks after the last member
            handle.seek(end)
            tail = handle.read(512)
        if len(tail) < 512 or tail.count(0) != 512:
            raise tarfile.ReadError("no end-of-archive marker")
        _finish(current, out)
    except (tarfile.TarError, EOFError, OSError) as err:
        # the sample being read at the cut is kept only if its complete members suffice
        if current is not None and current.image_ext() is not None and {"txt", "json"} & set(current.members):
            out.append(current)
        out.append(Skipped("truncated_shard", shard, str(err) or type(err).__name__))
    return out


class ShardReader:
    """Reads members' bytes by offset, keeping a few shard files open (one per DataLoader worker)."""

    def __init__(self, max_open: int = 4) -> None:
        self.max_open = max_open
        self.handles: dict[str, object] = {}

    def read(self, shard: str, offset: int, size: int) -> bytes:
        handle = self.handles.get(shard)
        if handle is None:
            if len(self.handles) >= self.max_open:
                oldest = next(iter(self.handles))
                self.handles.pop(oldest).close()  # type: ignore[attr-defined]
            handle = self.handles[shard] = open(shard, "rb")  # noqa: SIM115 - closed by close()
        handle.seek(offset)  # type: ignore[attr-defined]
        data = handle.read(size)  # type: ignore[attr-defined]
        if len(data) != size:
            raise EOFError(f"{shard}: {size - len(data)} bytes missing at offset {offset}")
        return data

    def close(self) -> None:
        for handle in self.handles.values():
            handle.close()  # type: ignore[attr-defined]
        self.handles.clear()

    def __getstate__(self) -> dict:
        return {"max_open": self.max_open, "handles": {}}  # open files never travel to workers
