"""Streaming WebDataset shards: split across ranks and workers, shuffled, resumable.

How one epoch is laid out (everything derives from (seed, epoch, rank)):

1. The shard list is permuted with a generator seeded by (seed, epoch).
2. Ranks (``split``): ``shards`` gives rank r the shards r, r+W, ... of that
   permutation (no rank opens another's shards: the way to scale out);
   ``samples`` lets every rank scan every shard's headers and keep stream
   positions r, r+W, ... (each sample once, at most W-1 dropped, whatever the
   shard sizes; only the kept samples' bytes are read). ``auto`` takes
   ``shards`` when the shard count is a multiple of W, else ``samples``.
3. The rank's stream (the samples of its shards, in tar order) passes through
   a shuffle buffer of ``shuffle_buffer`` entries seeded by (seed, epoch, rank).
   The buffer holds only member offsets (see
   :mod:`vlp.data.sources.webdataset`), never image bytes.
4. With several ranks the streams are cut to the shortest rank's length, so
   every rank yields the same number of batches (DDP needs that), dropping at
   most a few samples, like ``DistributedSampler(drop_last=True)``. The counts
   come from a header scan of all shards, done once. ``epoch_samples`` instead
   fixes the length per epoch up front (no scan); a rank whose shards run short
   then continues with a fresh pass over them (some samples repeat).
5. Workers: the stream is cut into batches of ``batch_size`` positions; batch b
   is decoded by worker (b - start) mod num_workers. Every worker walks the
   same (cheap, header-only) stream and decodes only its own batches, so the
   DataLoader's round-robin yields batches in stream order whatever the number
   of workers.

Resume is exact by deterministic replay: the position is (epoch, batches
delivered); restored, each worker replays the header stream of that epoch and
starts decoding at the first undelivered batch. A bad sample still occupies its
position (the batch is just one smaller), so positions never shift. An exact
resume needs the same shards, seed, batch size and number of ranks; the number
of workers may change.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info

from vlp.data.dataset import SampleProcessor, sample_rng
from vlp.data.skipping import Skipped
from vlp.data.sources.webdataset import TarSample, scan_shard

Element = TarSample | Skipped


def buffered_shuffle(stream: Iterable[Element], size: int, rng: random.Random) -> Iterator[Element]:
    """Shuffle with a buffer of ``size`` entries: each arriving entry replaces a random one, which is yielded."""
    buffer: list[Element] = []
    for element in stream:
        if len(buffer) < size:
            buffer.append(element)
            continue
        j = rng.randrange(size)
        yield buffer[j]
        buffer[j] = element
    rng.shuffle(buffer)
    yield from buffer


class ShardStream(IterableDataset):
    """Batches of processed samples from tar shards (see the module docstring); yields ``LoaderItem``s."""

    def __init__(
        self,
        shards: list[str],
        processor: SampleProcessor,
        collate_fn: Callable[[list[Any]], Any],
        batch_size: int,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        epoch_samples: int = 0,
        split: str = "auto",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.shards = [str(s) for s in shards]
        self.processor = processor
        self.collate_fn = collate_fn
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer if shuffle else 0
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch_samples = epoch_samples
        if split not in ("auto", "shards", "samples"):
            raise ValueError(f"split must be 'auto', 'shards' or 'samples', got {split!r}")
        self.split = split
        self.epoch = 0
        self.start_batch = 0
        self._counts: dict[str, int] | None = None

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch

    def shard_counts(self) -> dict[str, int]:
        """Stream entries per shard (samples plus skip records), from a header scan cached after the first call."""
        if self._counts is None:
            self._counts = {s: len(scan_shard(s)) for s in self.shards}
        return self._counts

    def _assignment(self, epoch: int, rank: int, repeat: int = 0) -> tuple[list[str], bool]:
        order = list(self.shards)
        if self.shuffle:
            random.Random(f"{self.seed}:{epoch}:{repeat}:shards").shuffle(order)
        by_shard = self.split == "shards" or (self.split == "auto" and len(order) % self.world_size == 0)
        if by_shard and len(order) >= self.world_size:
            return order[rank :: self.world_size], False
        return order, True  # every rank scans all shards, striding over stream positions

    def _rank_length(self, epoch: int, rank: int) -> int:
        mine, strided = self._assignment(epoch, rank)
        total = sum(self.shard_counts()[s] for s in mine)
        return len(range(rank, total, self.world_size)) if strided else total

    def epoch_length(self, epoch: int | None = None) -> int:
        """Entries this rank streams in ``epoch`` (equal for every rank when world_size > 1)."""
        epoch = self.epoch if epoch is None else epoch
        if self.epoch_samples:
            return self.epoch_samples // self.world_size
        if self.world_size == 1:
            return self._rank_length(epoch, 0)
        return min(self._rank_length(epoch, r) for r in range(self.world_size))

    def num_batches(self, epoch: int | None = None) -> int:
        length = self.epoch_length(epoch)
        return length // self.batch_size if self.drop_last else -(-length // self.batch_size)

    def _pass(self, epoch: int, repeat: int) -> Iterator[Element]:
        mine, strided = self._assignment(epoch, self.rank, repeat)
        stream: Iterator[Element] = (element for shard in mine for element in scan_shard(shard))
        if strided:
            stream = islice(stream, self.rank, None, self.world_size)
        if self.shuffle_buffer:
            rng = random.Random(f"{self.seed}:{epoch}:{repeat}:{self.rank}:buffer")
            stream = buffered_shuffle(stream, self.shuffle_buffer, rng)
        return stream

    def rank_stream(self, epoch: int) -> Iterator[Element]:
        """This rank's entries of ``epoch``, in order (header data only)."""
        if self.epoch_samples:

            def passes() -> Iterator[Element]:
                repeat = 0
                while True:
                    produced = 0
                    for element in self._pass(epoch, repeat):
                        produced += 1
                        yield element
                    if not produced:
                        return  # nothing readable at all: stop instead of spinning
                    repeat += 1

            return islice(passes(), self.epoch_length(epoch))
        stream = self._pass(epoch, 0)
        if self.world_size > 1:
            stream = islice(stream, self.epoch_length(epoch))
        return stream

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch, start = self.epoch, self.start_batch
        batch: list[tuple[int, Element]] = []
        number = 0
        try:
            for position, element in enumerate(self.rank_stream(epoch)):
                batch.append((position, element))
                if len(batch) < self.batch_size:
                    continue
                if number >= start and (number - start) % workers == worker:
                    yield self._decode(epoch, batch)
                number += 1
                batch = []
            if batch and not self.drop_last and number >= start and (number - start) % workers == worker:
                yield self._decode(epoch, batch)
        finally:
            self.processor.reader.close()

    def _decode(self, epoch: int, batch: list[tuple[int, Element]]) -> Any:
        samples = []
        for position, element in batch:
            sample = self.processor.process_tar(element, sample_rng(self.seed, epoch, f"{self.rank}:{position}"))
            if not isinstance(sample, Skipped):
                sample["meta"]["index"] = position
            samples.append(sample)
        return self.collate_fn(samples)
