"""write_atomic: the whole file or the old one, never half, and no temp file left behind."""

from __future__ import annotations

import pytest

from vlp.io import atomic
from vlp.io.atomic import write_atomic


def test_text_and_bytes_replace_the_file_whole(tmp_path):
    path = tmp_path / "sub" / "meta.json"
    assert write_atomic(path, "héllo\n") == path and path.read_bytes() == "héllo\n".encode()
    write_atomic(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01" and sorted(p.name for p in path.parent.iterdir()) == ["meta.json"]


def test_a_failed_write_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "paths.txt"
    path.write_text("old\n")

    def broken(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, "new\n")
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["paths.txt"]


def test_a_writer_function_writes_into_the_temp_file(tmp_path):
    """np.save(handle, rows) straight into the file (no bytes copy of a large array); a writer that fails
    leaves the old file and no temp file."""
    np = pytest.importorskip("numpy")
    path = tmp_path / "embeddings-00000.npy"
    rows = np.arange(12, dtype=np.float32).reshape(3, 4)
    write_atomic(path, lambda handle: np.save(handle, rows))
    assert np.array_equal(np.load(path), rows)

    def failing(handle):
        handle.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, failing)
    assert np.array_equal(np.load(path), rows) and [p.name for p in tmp_path.iterdir()] == [path.name]
