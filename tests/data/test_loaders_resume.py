"""Order depends only on (seed, epoch); a restored loader sees exactly the batches it would have seen,
with DataLoader workers and with several ranks; streaming shards too."""

from __future__ import annotations

from itertools import islice

import pytest
import torch
from loaders_helpers import webdataset_samples, write_manifest, write_tar

from vlp.config import from_dict
from vlp.data.config import DataConfig
from vlp.data.loader import build_loader
from vlp.data.sampler import ResumableSampler


def _manifest_config(root, count: int = 18) -> DataConfig:
    write_manifest(root, count)
    return from_dict(DataConfig, {"type": "manifest", "root": str(root), "paths": {"images": "images"},
                                  "image_size": 8, "seed": 7, "transform": {"hflip": 0.5, "scale": [0.3, 1.0]},
                                  "options": {"mode": "images"}})  # fmt: skip


def _record(batches) -> list[tuple[list, torch.Tensor]]:
    return [([m["image_id"] for m in b.meta], b.images.clone()) for b in batches]


def _assert_same(got, want) -> None:
    assert [ids for ids, _ in got] == [ids for ids, _ in want]
    for (_, a), (_, b) in zip(got, want):
        assert torch.equal(a, b)  # same crops and flips, bit for bit


def test_sampler_order_depends_only_on_seed_and_epoch() -> None:
    first = ResumableSampler(20, seed=3)
    assert first.epoch_indices(0) == ResumableSampler(20, seed=3).epoch_indices(0)
    assert first.epoch_indices(0) != first.epoch_indices(1)
    assert sorted(first.epoch_indices(1)) == list(range(20))
    ranks = [ResumableSampler(20, seed=3, rank=r, world_size=4).epoch_indices(2) for r in range(4)]
    assert sorted(i for r in ranks for i in r) == list(range(20))  # each sample exactly once across ranks
    assert first.epoch_indices(2)[1::4] == ranks[1]
    padded = [ResumableSampler(10, seed=0, rank=r, world_size=3).epoch_indices(0) for r in range(3)]
    assert [len(r) for r in padded] == [4, 4, 4] and set().union(*padded) == set(range(10))
    dropped = [ResumableSampler(10, seed=0, rank=r, world_size=3, drop_last=True) for r in range(3)]
    assert [len(d) for d in dropped] == [3, 3, 3]
    resumed = ResumableSampler(20, seed=3)
    resumed.load_state_dict({"epoch": 1, "consumed": 5, "seed": 3, "size": 20, "world_size": 1})
    assert list(resumed) == first.epoch_indices(1)[5:] and len(resumed) == 15
    with pytest.raises(ValueError, match="seed=4 but this sampler has 3"):
        resumed.load_state_dict({"epoch": 0, "consumed": 0, "seed": 4})


@pytest.mark.slow  # DataLoader worker processes
def test_map_style_resume_with_workers_is_exact(tmp_path) -> None:
    config = _manifest_config(tmp_path)
    reference = build_loader(config, "train", batch_size=4, num_workers=0)
    assert len(reference) == 4  # 18 images, drop_last in training
    want = _record(list(reference) + list(reference))  # epochs 0 and 1
    assert [ids for ids, _ in want[:4]] != [ids for ids, _ in want[4:]]  # epoch 1 is reshuffled
    assert all(len({i for ids, _ in epoch for i in ids}) == 16 for epoch in (want[:4], want[4:]))

    run = build_loader(config, "train", batch_size=4, num_workers=2)
    got = _record(islice(iter(run), 3))  # stop mid-epoch (the workers had prefetched more)
    state = run.state_dict()
    assert (state["epoch"], state["batches"], state["samples"]) == (0, 3, 12)
    resumed = build_loader(config, "train", batch_size=4, num_workers=2)
    resumed.load_state_dict(state)
    got += _record(list(resumed) + list(resumed))
    _assert_same(got, want)
    with pytest.raises(ValueError, match="batch_size=4"):
        build_loader(config, "train", batch_size=3).load_state_dict(state)


def test_ranks_split_each_epoch_and_resume(tmp_path) -> None:
    config = _manifest_config(tmp_path, count=16)
    loaders = [build_loader(config, "train", batch_size=2, rank=r, world_size=2) for r in range(2)]
    epoch0 = [[i for b in loader for i in (m["image_id"] for m in b.meta)] for loader in loaders]
    assert sorted(epoch0[0] + epoch0[1]) == list(range(16)) and len(epoch0[0]) == 8
    want = _record(loaders[1])  # rank 1, epoch 1
    restarted = build_loader(config, "train", batch_size=2, rank=1, world_size=2)
    restarted.load_state_dict({**loaders[1].state_dict(), "epoch": 1, "batches": 2, "samples": 4})
    _assert_same(_record(restarted), want[2:])


def _shards(root, sizes: list[int]) -> DataConfig:
    start = 0
    for k, size in enumerate(sizes):
        write_tar(root / "shards" / f"train-{k:05d}.tar", webdataset_samples(start, size, (12, 12)))
        start += size
    return from_dict(DataConfig, {"type": "webdataset", "root": str(root), "image_size": 8, "seed": 5,
                                  "shuffle_buffer": 5, "paths": {"shards": "shards"},
                                  "transform": {"hflip": 0.5}})  # fmt: skip


@pytest.mark.slow  # DataLoader worker processes
def test_streaming_order_is_seeded_and_independent_of_workers(tmp_path) -> None:
    config = _shards(tmp_path, [7, 7, 7])
    one = build_loader(config, "train", batch_size=4, num_workers=0, drop_last=False)
    want = _record(list(one) + list(one))
    ids0 = [i for ids, _ in want[:6] for i in ids]
    assert sorted(ids0) == list(range(21)) and ids0 != sorted(ids0)  # all samples, shuffled
    assert [i for ids, _ in want[6:] for i in ids] != ids0  # a new epoch, a new order
    two = build_loader(config, "train", batch_size=4, num_workers=2, drop_last=False)
    _assert_same(_record(list(two) + list(two)), want)


@pytest.mark.slow  # DataLoader worker processes
def test_streaming_resume_replays_to_the_exact_position(tmp_path) -> None:
    config = _shards(tmp_path, [7, 7, 7])
    want = _record(build_loader(config, "train", batch_size=4, drop_last=False))
    run = build_loader(config, "train", batch_size=4, num_workers=2, drop_last=False)
    got = _record(islice(iter(run), 2))
    resumed = build_loader(config, "train", batch_size=4, num_workers=2, drop_last=False)
    resumed.load_state_dict(run.state_dict())
    got += _record(resumed)
    _assert_same(got, want)


@pytest.mark.parametrize(
    ("sizes", "split", "per_rank", "lost"),
    [
        ([5, 5, 5, 5], "auto", 10, 0),  # whole shards per rank
        ([7], "auto", 3, 1),  # fewer shards than ranks: positions are strided
        ([7, 7, 7], "auto", 10, 1),  # 3 shards on 2 ranks: strided, so at most W - 1 samples lost
        ([7, 7, 7], "shards", 7, 7),  # forced whole shards: the longer rank is cut to the shorter's length
    ],
)
def test_streaming_ranks_are_disjoint_and_equal(tmp_path, sizes, split, per_rank, lost) -> None:
    config = _shards(tmp_path, sizes)
    config.options = {"split": split}
    seen = []
    for rank in range(2):
        loader = build_loader(config, "train", batch_size=2, rank=rank, world_size=2, drop_last=False)
        ids = [m["image_id"] for b in loader for m in b.meta]
        assert len(ids) == per_rank and len(loader) == -(-per_rank // 2)
        seen.append(set(ids))
    assert not seen[0] & seen[1]
    assert len(seen[0] | seen[1]) == sum(sizes) - lost


def test_streaming_epoch_samples_fixes_the_length(tmp_path) -> None:
    config = _shards(tmp_path, [3, 3])
    config.options = {"epoch_samples": 16}
    loaders = [build_loader(config, "train", batch_size=4, rank=r, world_size=2) for r in range(2)]
    counts = [sum(len(b) for b in loader) for loader in loaders]
    assert counts == [8, 8]  # each rank cycles its 3-sample shard to fill 16 / 2


def test_iterating_leaves_the_global_random_streams_alone(tmp_path) -> None:
    import random

    loader = build_loader(_manifest_config(tmp_path, count=8), "train", batch_size=4)
    torch.manual_seed(0)
    random.seed(0)
    before = (torch.get_rng_state(), random.getstate())
    assert len(list(loader)) == 2
    assert torch.equal(torch.get_rng_state(), before[0]) and random.getstate() == before[1]


def test_rank_and_world_size_come_from_torch_distributed(tmp_path) -> None:
    import torch.distributed as dist

    from vlp.data.sampler import resolve_rank

    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    assert resolve_rank() == (0, 1) and resolve_rank(1, 3) == (1, 3)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert resolve_rank() == (0, 1) and resolve_rank(world_size=4) == (0, 4)
        loader = build_loader(_manifest_config(tmp_path, count=8), "train", batch_size=2)
        assert (loader.rank, loader.world_size) == (0, 1)
    finally:
        dist.destroy_process_group()
    with pytest.raises(ValueError, match="rank=2, world_size=2"):
        resolve_rank(2, 2)
