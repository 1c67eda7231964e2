"""The index's roots from what ``list_inputs`` found (folders vs files), without a second stat per input; the
same roots as looking each input up."""

from __future__ import annotations

import os

from PIL import Image

from vlp.data.inputs import list_inputs
from vlp.tasks.retrieval.index_inputs import input_roots


def test_roots_from_list_inputs_folders_need_no_stat_and_match(tmp_path, monkeypatch) -> None:
    for name in ("a/1.png", "a/2.png", "b/c/3.png", "d.png/4.png"):  # d.png is a folder
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    specs = [str(tmp_path / "a" / "1.png"), str(tmp_path / "a" / "2.png"), str(tmp_path / "b"),
             str(tmp_path / "d.png"), str(tmp_path / "b" / "*" / "*.png")]  # fmt: skip
    folders: set[str] = set()
    list_inputs(specs, folders)
    assert folders == {str(tmp_path / "b"), str(tmp_path / "d.png")}
    looked_up = input_roots(specs)
    assert looked_up == sorted(str(tmp_path / n) for n in ("a", "b", "d.png"))
    calls: list[str] = []
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: calls.append(os.fspath(p)) or real_stat(p, *a, **k))
    assert input_roots(specs, folders) == looked_up
    assert calls == [str(tmp_path / "b")]  # only the glob's fixed prefix is looked up
