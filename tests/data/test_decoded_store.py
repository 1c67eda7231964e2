"""The decoded-image store (``data.decoded_cache``): exact, invalidated by file and transform changes, safe."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from loaders_helpers import patterned

from vlp.config import ConfigError, from_dict
from vlp.data import DataConfig, build_dataset, build_loader
from vlp.data.decoded_store import DecodedStore
from vlp.data.image_io import decode_image
from vlp.data.loader import loader_workers
from vlp.data.skipping import SampleError, Skipped

SIZES = [(200, 150), (64, 64), (90, 120), (48, 40)]  # the first two are decoded in JPEG draft mode at size 32


def write_set(root: Path) -> Path:
    """A manifest of JPEGs of several sizes, a PNG, a corrupt file and a missing one, two captions each."""
    images = root / "images"
    images.mkdir(parents=True)
    records = []
    for i, size in enumerate(SIZES):
        patterned(size, i).save(images / f"{i}.jpg", quality=92)
        records += [{"image": f"{i}.jpg", "caption": f"picture {i} left"}, {"image": f"{i}.jpg", "caption": f"{i}"}]
    patterned((30, 20), 5).save(images / "5.png")
    (images / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    records += [{"image": "5.png", "caption": "a png"}, {"image": "bad.jpg", "caption": "broken"}]
    records += [{"image": "gone.jpg", "caption": "missing"}]
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


def config(root: Path, cache: str = "", **extra) -> DataConfig:
    data = {"type": "manifest", "root": str(root), "paths": {"manifest": "manifest.jsonl", "images": "images"},
            "image_size": 32, "decoded_cache": cache, "transform": {"hflip": 0.5}, **extra}  # fmt: skip
    return from_dict(DataConfig, data)


def same(a, b) -> bool:
    if isinstance(a, Skipped) or isinstance(b, Skipped):
        return a == b
    return torch.equal(a["image"], b["image"]) and a.get("text") == b.get("text") and a["meta"] == b["meta"]


@pytest.mark.parametrize(("train", "eval_resize"), [(True, None), (False, None), (False, "none")])
def test_store_gives_the_decode_paths_samples_bit_for_bit(tmp_path, train, eval_resize) -> None:
    root = write_set(tmp_path / "data")
    extra = {"transform": {"hflip": 0.5, "eval_resize": eval_resize}}  # "none": images of several sizes
    plain = build_dataset(config(root, **extra), "train", train=train)
    stored = build_dataset(config(root, str(tmp_path / "cache"), **extra), "train", train=train)
    assert stored.processor.store is not None and stored.processor.store.built
    for epoch in (0, 1):  # random crops and flips of two epochs
        plain.set_epoch(epoch)
        stored.set_epoch(epoch)
        for i in range(len(plain)):
            assert same(plain[i], stored[i]), (train, epoch, i)
        # the batch path (what the DataLoader calls) equals the per-sample path
        indices = list(range(len(plain)))[::-1]
        expected = [plain[i] for i in indices]
        assert all(same(a, b) for a, b in zip(stored.__getitems__(indices), expected))
        assert all(same(a, b) for a, b in zip(plain.__getitems__(indices), expected))
    skipped = [s for s in (stored[i] for i in range(len(stored))) if isinstance(s, Skipped)]
    assert sorted(s.reason for s in skipped) == ["corrupt_image", "missing_file"]


def test_store_holds_what_decode_image_returns(tmp_path) -> None:
    root = write_set(tmp_path / "data")
    path = str(root / "images" / "0.jpg")
    store = DecodedStore(tmp_path / "cache", [path], (32, 32))
    image, full = store.decode(path)
    expected, expected_full = decode_image(path, (32, 32))
    assert image.size == (50, 38) and full == (200, 150) == expected_full  # draft mode: 1/4 scale
    assert np.array_equal(np.asarray(image), np.asarray(expected))


def test_loader_with_workers_reads_the_store(tmp_path, monkeypatch) -> None:
    root = write_set(tmp_path / "data")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)  # workers get cores
    batches = []
    for cache, workers in (("", 0), (str(tmp_path / "cache"), 1)):
        loader = build_loader(config(root, cache), "train", batch_size=4, num_workers=workers)
        batches.append([b.images for b in loader])
    assert len(batches[0]) == len(batches[1]) == 2
    assert all(torch.equal(a, b) for a, b in zip(*batches))


def test_a_changed_file_rebuilds_the_store(tmp_path) -> None:
    root = write_set(tmp_path / "data")
    cache = str(tmp_path / "cache")
    first = build_dataset(config(root, cache), "train", train=False)
    again = build_dataset(config(root, cache), "train", train=False)
    assert first.processor.store.built and not again.processor.store.built  # up to date: not decoded again
    before = again[1]["image"]  # image 1.jpg (one sample per image here)
    path = root / "images" / "1.jpg"
    patterned((64, 64), 3).save(path, quality=92)  # other pixels, maybe the same size: the time tells
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    changed = build_dataset(config(root, cache), "train", train=False)
    assert changed.processor.store.built
    assert not torch.equal(changed[1]["image"], before)
    assert torch.equal(changed[1]["image"], build_dataset(config(root), "train", train=False)[1]["image"])
    # the replaced store's pixels are gone, the new one stands alone
    assert len(list(Path(cache).glob("vlp-decoded-*.u8"))) == 1


def test_a_file_that_appears_is_decoded(tmp_path) -> None:
    root = write_set(tmp_path / "data")
    cache = str(tmp_path / "cache")
    assert isinstance(build_dataset(config(root, cache), "train", train=False)[6], Skipped)  # gone.jpg
    patterned((40, 40), 1).save(root / "images" / "gone.jpg", quality=92)
    dataset = build_dataset(config(root, cache), "train", train=False)
    assert dataset.processor.store.built and not isinstance(dataset[6], Skipped)


def test_a_transform_change_gets_its_own_store(tmp_path) -> None:
    root = write_set(tmp_path / "data")
    cache = tmp_path / "cache"
    small = build_dataset(config(root, str(cache)), "train").processor.store
    large = build_dataset(config(root, str(cache), image_size=100), "train").processor.store
    assert large.built and large.name != small.name and large.draft_size == (100, 100)
    assert len(list(cache.glob("vlp-decoded-*.json"))) == 2
    # no draft (transform.draft: false): full-size pixels, a store of its own
    full = build_dataset(config(root, str(cache), transform={"draft": False}), "train").processor.store
    assert (
        full.built and full.draft_size is None and full.array(str(root / "images" / "0.jpg"))[0].shape == (150, 200, 3)
    )


def test_strict_raises_naming_the_file_as_without_the_store(tmp_path) -> None:
    root = write_set(tmp_path / "data")
    dataset = build_dataset(config(root, str(tmp_path / "cache"), strict=True), "train", train=False)
    with pytest.raises(SampleError, match=r"bad\.jpg: corrupt_image"):
        dataset[5]


def test_never_overwrites_a_file_it_did_not_write(tmp_path) -> None:
    root = write_set(tmp_path / "data")
    cache = tmp_path / "cache"
    store = build_dataset(config(root, str(cache)), "train").processor.store
    store.index_path.write_text('{"mine": true}')  # a user's file under the store's name
    with pytest.raises(ValueError, match=r"not written by vlp's decoded-image store.*not overwritten"):
        build_dataset(config(root, str(cache)), "train")
    assert store.index_path.read_text() == '{"mine": true}'
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match=r"afile exists and is not a folder"):
        build_dataset(config(root, str(tmp_path / "afile")), "train")


def test_streaming_data_refuses_the_store(tmp_path) -> None:
    data = {"type": "webdataset", "root": str(tmp_path), "paths": {"shards": "x-{000..001}.tar"},
            "decoded_cache": str(tmp_path / "cache")}  # fmt: skip
    with pytest.raises(ConfigError, match=r"data.decoded_cache.*'webdataset' streams its shards"):
        build_dataset(from_dict(DataConfig, data), "train")


def test_few_cores_load_stored_images_in_the_main_process(tmp_path, monkeypatch) -> None:
    root = write_set(tmp_path / "data")
    cache = str(tmp_path / "cache")
    stored = build_dataset(config(root, cache), "train")
    assert loader_workers(2, stored, cores=2, threads=2) == 0  # the workers would have no core of their own
    assert loader_workers(2, stored, cores=16, threads=8) == 2
    assert loader_workers(2, build_dataset(config(root), "train"), cores=2, threads=2) == 2  # decoding: as asked
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    loader = build_loader(config(root, cache), "train", batch_size=4, num_workers=2)
    assert loader.num_workers == 0 and loader.prefetch_thread  # made one batch ahead in a thread instead
    assert build_loader(config(root), "train", batch_size=4, num_workers=2).num_workers == 2


def test_concurrent_builders_decode_once(tmp_path, monkeypatch) -> None:
    from vlp.data import decoded_store

    root = write_set(tmp_path / "data")
    paths = sorted(str(p) for p in (root / "images").iterdir())
    # the first decode waits until all three builders have reached the lock: without it they would all decode
    arrived, everyone = [], threading.Event()
    locked = decoded_store._locked

    def counted(path):
        arrived.append(path)
        if len(arrived) == 3:
            everyone.set()
        return locked(path)

    def waiting(path, *args, **kwargs):
        everyone.wait(timeout=30)  # only a guard against a hang: the assertions below do not depend on it
        return decode_image(path, *args, **kwargs)

    monkeypatch.setattr(decoded_store, "_locked", counted)
    monkeypatch.setattr(decoded_store, "decode_image", waiting)
    stores: list[DecodedStore] = []
    threads = [threading.Thread(target=lambda: stores.append(DecodedStore(tmp_path / "c", paths, (32, 32))))
               for _ in range(3)]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(s.built for s in stores) == [False, False, True]  # the others waited and found it done
    assert len(list((tmp_path / "c").glob("*.u8"))) == 1
    first = paths[0]
    assert all(np.array_equal(s.array(first)[0], stores[0].array(first)[0]) for s in stores)


def test_an_interrupted_build_leaves_no_partial_pixels(tmp_path, monkeypatch) -> None:
    """Ctrl-C in the middle of decoding: the partial pixel file goes; the next build finds nothing stale."""
    from vlp.data import decoded_store

    root = write_set(tmp_path / "data")
    paths = sorted(str(p) for p in (root / "images").iterdir())
    calls = []

    def interrupted(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return decode_image(path, *args, **kwargs)

    monkeypatch.setattr(decoded_store, "decode_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        DecodedStore(tmp_path / "c", paths, (32, 32))
    assert not list((tmp_path / "c").glob("*.tmp"))
    monkeypatch.setattr(decoded_store, "decode_image", decode_image)
    name = DecodedStore(tmp_path / "elsewhere", paths, (32, 32)).name  # the store's name: its settings and files
    (tmp_path / "c" / f"{name}-killed.u8.tmp").write_bytes(b"x")  # after SIGKILL no except clause runs
    store = DecodedStore(tmp_path / "c", paths, (32, 32))
    assert store.built
    assert not list((tmp_path / "c").glob("*.tmp")) and len(list((tmp_path / "c").glob("*.u8"))) == 1
