"""VLPLoader's prefetch thread: the same batches, the same position, errors where they happen, and a
stop mid-epoch leaves no thread behind."""

from __future__ import annotations

import threading
from itertools import islice

import pytest
import torch
from loaders_helpers import write_manifest

from vlp.config import from_dict
from vlp.data.config import DataConfig
from vlp.data.loader import VLPLoader, build_dataset
from vlp.data.skipping import SampleError


def _config(root, **extra) -> DataConfig:
    write_manifest(root, 18)
    return from_dict(DataConfig, {"type": "manifest", "root": str(root), "paths": {"images": "images"},
                                  "image_size": 8, "seed": 7, "transform": {"hflip": 0.5, "scale": [0.3, 1.0]},
                                  "options": {"mode": "images"}, **extra})  # fmt: skip


def _loader(config: DataConfig, prefetch: bool) -> VLPLoader:
    return VLPLoader(build_dataset(config, "train"), 4, seed=7, drop_last=True, prefetch_thread=prefetch)


def _record(batches) -> list[tuple[list, torch.Tensor]]:
    return [([m["image_id"] for m in b.meta], b.images.clone()) for b in batches]


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "vlp-prefetch"]


def test_prefetched_batches_and_position_are_the_same(tmp_path) -> None:
    config = _config(tmp_path)
    plain, threaded = _loader(config, False), _loader(config, True)
    want = _record(list(plain) + list(plain))  # two epochs
    got = _record(list(threaded) + list(threaded))
    assert [ids for ids, _ in got] == [ids for ids, _ in want] and len(want) == 8
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(got, want))
    assert threaded.state_dict() == plain.state_dict()
    # stopped after 2 batches: the thread has made a third, which does not count; a resumed loader goes on
    stopped = _loader(config, True)
    first = _record(islice(iter(stopped), 2))
    assert stopped.state_dict()["batches"] == 2 and not _prefetch_threads()
    resumed = _loader(config, True)
    resumed.load_state_dict(stopped.state_dict())
    rest = _record(resumed)
    assert [ids for ids, _ in first + rest] == [ids for ids, _ in want[:4]]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(first + rest, want[:4]))


def test_an_error_in_the_thread_is_raised_to_the_caller(tmp_path) -> None:
    config = _config(tmp_path, strict=True)
    (tmp_path / "images" / "003.png").write_bytes(b"not an image")
    with pytest.raises(SampleError, match=r"003\.png: not_an_image"):
        list(_loader(config, True))
    assert not _prefetch_threads()
