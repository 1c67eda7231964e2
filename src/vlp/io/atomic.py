"""Write a file so that a reader (or a crash) never sees half of it: a temp file in the same folder,
then a rename over the target. The one write-and-rename every on-disk format of vlp uses."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomic(path: str | Path, data: bytes | str | Callable[[BinaryIO], object]) -> Path:
    """Write ``data`` (text is UTF-8) to ``path`` atomically, creating its folder; returns the path.
    ``data`` may also be a function that writes to the open binary file (``np.save`` of a large array: no
    copy of it in memory first)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            if callable(data):
                data(handle)
            else:
                handle.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
