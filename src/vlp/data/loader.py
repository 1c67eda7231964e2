"""``build_dataset`` / ``build_loader``: a recipe's data section -> batches, resumably.

>>> loader = build_loader(recipe.data, "train", tokenizer, batch_size=32, num_workers=2)
>>> for batch in loader: ...                      # one epoch (or the rest of it)
>>> state = loader.state_dict()                    # save with the checkpoint
>>> loader.load_state_dict(state)                  # a resumed run sees the same next batches

:class:`VLPLoader` wraps a ``torch.utils.data.DataLoader``. Its position is
(epoch, batches and samples delivered in that epoch), counted in the main
process as batches are handed out, so prefetched batches never count. Map-style
types use :class:`ResumableSampler`; ``webdataset`` uses :class:`ShardStream`.
Iterating again continues where the last iteration stopped; a finished epoch
moves to the next one. Skipped samples are counted per reason and logged as
``skipped N: reason=count, ...`` at the end of every epoch (and once for what
the index build skipped).
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from vlp.config import ConfigError
from vlp.data.batch import Batch
from vlp.data.collate import LoaderCollate, LoaderItem, collate
from vlp.data.config import DataConfig
from vlp.data.dataset import ProcessorConfig, SampleProcessor, VLDataset, normalize_pixels
from vlp.data.decoded_store import DecodedStore
from vlp.data.registry import attach_regions, resolve_context, shapes_delegate, tag_names_for
from vlp.data.sampler import ResumableSampler, resolve_rank
from vlp.data.skipping import SkipCounter
from vlp.data.sources.webdataset import expand_shards
from vlp.data.streaming import ShardStream

logger = logging.getLogger("vlp.data")


def _identity(item: Any) -> Any:
    return item


class _PixelBatches(Dataset):
    """A :class:`VLDataset` whose batches keep their images as transformed uint8 pixels: what DataLoader
    workers send (a quarter of float32's bytes through shared memory and pickling, measured ~0.5 ms per
    224x224 image); :class:`VLPLoader` normalizes them in the main process, bit for bit the same values."""

    def __init__(self, dataset: VLDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Any:
        return self.dataset.__getitems__([i], normalize=False)[0]

    def __getitems__(self, indices: list[int]) -> list[Any]:
        return self.dataset.__getitems__(indices, normalize=False)


def build_dataset(
    config: DataConfig,
    split: str,
    tokenizer: Any = None,
    *,
    train: bool | None = None,
    batch_size: int = 32,
    shuffle: bool | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    drop_last: bool = False,
    normalize_answer: Callable[[str], str] | None = None,
) -> VLDataset | ShardStream:
    """The dataset of ``split`` as the recipe's ``data`` section describes it.

    ``train`` (default: ``split == "train"``) picks the training transform and,
    for caption types with ``mode: auto``, one sample per caption instead of
    one per image. Map-style types return a :class:`VLDataset` (items are
    sample dicts or ``Skipped`` records); ``webdataset`` returns a
    :class:`ShardStream`, which batches by itself and so needs the tokenizer,
    ``batch_size``, rank and world size here.
    """
    train = split == "train" if train is None else train
    if config.type == "shapesworld":
        config = shapes_delegate(config)
    spec, ctx = resolve_context(config, split, train, normalize_answer)
    if config.decoded_cache and spec.index is None:
        raise ConfigError(
            f"data.decoded_cache: {config.decoded_cache!r} is for data sets of image files; type {config.type!r} "
            'streams its shards (set data.decoded_cache to "")'
        )
    options = ctx.options
    processor_cfg = ProcessorConfig(
        image_size=config.image_size, transform=config.transform, train=train, load_images=options.load_images,
        max_image_pixels=config.max_image_pixels, max_caption_chars=config.max_caption_chars,
        max_regions=options.max_regions, strict=config.strict, tag_names=tag_names_for(ctx),
    )  # fmt: skip
    if spec.index is None:  # streaming
        rank, world_size = resolve_rank(rank, world_size)
        shards = [str(p) for p in expand_shards(ctx.raw_paths["shards"], ctx.root)]
        processor = SampleProcessor(processor_cfg)
        return ShardStream(
            shards, processor, LoaderCollate(tokenizer, config.max_text_len), batch_size, seed=config.seed,
            shuffle_buffer=config.shuffle_buffer, shuffle=train if shuffle is None else shuffle, rank=rank,
            world_size=world_size, drop_last=drop_last, epoch_samples=options.epoch_samples, split=options.split,
        )  # fmt: skip
    index = spec.index(ctx)
    attach_regions(ctx, index)
    vocab = index.extras.get("answer_vocab")
    if vocab:
        processor_cfg.answer_vocab = vocab
        processor_cfg.soft_score = options.soft_score
    if not index.records:
        raise ConfigError(f"data ({config.type}, split {split!r}): no usable samples under {ctx.root}")
    processor = SampleProcessor(processor_cfg)
    if config.decoded_cache and options.load_images:
        paths = [r["image"] for r in index.records if isinstance(r.get("image"), str)]
        processor.store = DecodedStore(
            config.decoded_cache, paths, processor.transform.draft_size, config.max_image_pixels
        )
    return VLDataset(index, processor, seed=config.seed)


class _Prefetched:
    """The items of ``source``, made one ahead in a daemon thread.

    Nothing in making a batch draws from the training process's random streams (samples draw from
    generators seeded by (seed, epoch, index), the sampler from its own), so the thread changes no
    value; the loader still counts only the batches it hands out. The tensor work, PIL and the
    tokenizer release the GIL, so the thread mostly runs while the model's step waits on its own kernels.
    An error in the thread is raised in the caller, at the batch where it happened.
    """

    _END = object()

    def __init__(self, source: Iterator[LoaderItem]) -> None:
        self.source = source
        self.queue: queue.Queue = queue.Queue(maxsize=1)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="vlp-prefetch", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for item in self.source:
                if not self._put(item):
                    return
        except BaseException as err:  # handed to the caller, raised there
            self._put(err)
            return
        self._put(self._END)

    def _put(self, value: Any) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[LoaderItem]:
        return self

    def __next__(self) -> LoaderItem:
        value = self.queue.get()
        if value is self._END:
            self.thread.join()
            raise StopIteration
        if isinstance(value, BaseException):
            self.thread.join()
            raise value
        return value

    def close(self) -> None:
        """Stop the thread (a run that ends mid-epoch) and wait for it."""
        self.stop.set()
        self.thread.join()


class VLPLoader:
    """Batches of a dataset with an exact, saveable position (see the module docstring)."""

    def __init__(
        self,
        dataset: VLDataset | ShardStream,
        batch_size: int,
        tokenizer: Any = None,
        max_text_len: int = 40,
        num_workers: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,
        pin_memory: bool = False,
        timeout: float = 0.0,
        name: str = "data",
        prefetch_thread: bool = False,
    ) -> None:
        """``prefetch_thread``: with ``num_workers=0``, make the next batch in a background thread while the
        caller trains on this one (the batches and the position are the same; see :class:`_Prefetched`)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.drop_last = drop_last
        self.pin_memory = pin_memory
        self.timeout = timeout
        self.name = name
        self.prefetch_thread = prefetch_thread
        self.streaming = isinstance(dataset, ShardStream)
        if self.streaming:
            self.rank, self.world_size = dataset.rank, dataset.world_size
            self.seed = dataset.seed
            self.sampler = None
        else:
            self.rank, self.world_size = resolve_rank(rank, world_size)
            self.seed = seed
            self.sampler = ResumableSampler(len(dataset), shuffle, seed, self.rank, self.world_size, drop_last)
        vocab = getattr(getattr(dataset, "processor", None), "config", None)
        num_answers = len(vocab.answer_vocab) if vocab is not None and vocab.answer_vocab else None
        self.collate = LoaderCollate(tokenizer, max_text_len, num_answers)
        if self.streaming:
            dataset.collate_fn = self.collate
        self.epoch = 0
        self.batches = 0  # delivered in this epoch
        self.samples = 0  # dataset positions consumed in this epoch (bad samples included)
        self.skips = SkipCounter()
        self.epoch_skips = SkipCounter()
        index_skips = getattr(dataset, "index_skips", [])
        if index_skips:
            counter = SkipCounter()
            counter.extend(index_skips)
            counter.log(f"{name}: while indexing, ")
            self.skips.extend(index_skips)

    # ------------------------------------------------------------------ position
    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning at the next iteration."""
        self.epoch, self.batches, self.samples = epoch, 0, 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch, "batches": self.batches, "samples": self.samples, "seed": self.seed,
            "batch_size": self.batch_size, "world_size": self.world_size, "rank": self.rank,
            "streaming": self.streaming, "skips": self.skips.state_dict(),
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("seed", "batch_size", "world_size", "streaming"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(
                    f"loader state was saved with {key}={state[key]!r} but this loader has {getattr(self, key)!r}; "
                    "an exact resume needs the same data seed, batch size, number of ranks and loader type"
                )
        self.epoch, self.batches, self.samples = int(state["epoch"]), int(state["batches"]), int(state["samples"])
        self.skips.load_state_dict(state.get("skips", {}))

    @property
    def skip_counts(self) -> dict[str, int]:
        """Skipped samples by reason since the start of the run (index skips included)."""
        return dict(self.skips.counts)

    # ------------------------------------------------------------------ iteration
    def __len__(self) -> int:
        """Batches in a whole epoch of this rank."""
        if self.streaming:
            return self.dataset.num_batches(self.epoch)
        per_epoch = self.sampler.per_epoch
        return per_epoch // self.batch_size if self.drop_last else math.ceil(per_epoch / self.batch_size)

    def _dataloader(self) -> DataLoader:
        # an explicit generator: otherwise starting an iterator draws the workers' base seed from the
        # global torch RNG, and a resumed run's training randomness would depend on where epochs start
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        common = {"num_workers": self.num_workers, "pin_memory": self.pin_memory, "timeout": self.timeout,
                  "generator": generator}  # fmt: skip
        if self.streaming:
            self.dataset.set_position(self.epoch, self.batches)
            return DataLoader(self.dataset, batch_size=None, collate_fn=_identity, **common)
        self.sampler.set_epoch(self.epoch, self.samples)
        self.dataset.set_epoch(self.epoch)
        # workers send uint8 pixels (normalized in __iter__); in this process the float batch is made at once
        dataset = _PixelBatches(self.dataset) if self.num_workers > 0 else self.dataset
        return DataLoader(dataset, batch_size=self.batch_size, sampler=self.sampler, collate_fn=self.collate,
                          drop_last=self.drop_last, **common)  # fmt: skip

    def _items(self) -> Iterator[LoaderItem]:
        items = iter(self._dataloader())
        return _Prefetched(items) if self.prefetch_thread and self.num_workers == 0 else items

    def _normalize(self, batch: Batch) -> None:
        """(B, H, W, 3) uint8 from a worker -> (B, 3, H, W) float32, as the dataset normalizes in one process."""
        pinned = batch.images.is_pinned()
        batch.images = normalize_pixels(batch.images.numpy(), self.dataset.processor.config.transform)
        if pinned:
            batch.images = batch.images.pin_memory()

    def __iter__(self) -> Iterator[Batch]:
        finished = False
        items = self._items()
        try:
            for item in items:
                assert isinstance(item, LoaderItem)
                self.batches += 1
                self.samples += item.consumed
                self.skips.extend(item.skips)
                self.epoch_skips.extend(item.skips)
                if item.batch is not None:
                    if item.batch.images is not None and item.batch.images.dtype == torch.uint8:  # a worker's pixels
                        self._normalize(item.batch)
                    yield item.batch
            finished = True
        finally:
            if isinstance(items, _Prefetched):
                items.close()
            if not finished:  # a run that stops mid-epoch (a step budget) still reports what it skipped
                self.epoch_skips.log(f"{self.name} epoch {self.epoch} so far: ")
        self.epoch_skips.log(f"{self.name} epoch {self.epoch}: ")
        self.epoch_skips = SkipCounter()
        self.set_epoch(self.epoch + 1)


def loader_workers(requested: int, dataset: VLDataset | ShardStream, cores: int | None, threads: int) -> int:
    """The DataLoader workers to start: ``requested``, or 0 for a data set whose images come decoded from
    the store (``data.decoded_cache``, no region files) when the workers would have no core of their own
    (cores <= torch threads + workers). What is left per sample then costs less than a step's share of
    a worker's start, its copies of every batch and its contention with the model's threads. Exact: a
    sample's randomness does not depend on who loads it."""
    processor = getattr(dataset, "processor", None)
    if requested == 0 or getattr(processor, "store", None) is None:
        return requested
    records = dataset.index.records
    if records and records[0].get("regions"):
        return requested  # region files are still read per sample: workers may pay
    return 0 if (cores or 1) <= threads + requested else requested


def build_loader(
    config: DataConfig,
    split: str,
    tokenizer: Any = None,
    batch_size: int = 32,
    *,
    num_workers: int = 0,
    train: bool | None = None,
    shuffle: bool | None = None,
    drop_last: bool | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    pin_memory: bool = False,
    timeout: float = 0.0,
    normalize_answer: Callable[[str], str] | None = None,
) -> VLPLoader:
    """A resumable loader of ``split``: shuffled and dropping the last partial batch when training.

    ``rank``/``world_size`` default to torch.distributed's when it is
    initialised; each rank then gets its own share of every epoch.
    """
    train = split == "train" if train is None else train
    shuffle = train if shuffle is None else shuffle
    drop_last = train if drop_last is None else drop_last
    dataset = build_dataset(
        config, split, tokenizer, train=train, batch_size=batch_size, shuffle=shuffle, rank=rank,
        world_size=world_size, drop_last=drop_last, normalize_answer=normalize_answer,
    )  # fmt: skip
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    workers = loader_workers(num_workers, dataset, cores, torch.get_num_threads())
    if workers != num_workers:
        logger.info(
            "%s/%s: images come decoded from %s; loading in a thread of the main process instead of %d worker(s) "
            "that would share %s core(s) with %d torch thread(s)", config.type, split, config.decoded_cache,
            num_workers, cores, torch.get_num_threads(),
        )  # fmt: skip
    return VLPLoader(
        dataset, batch_size, tokenizer, config.max_text_len, workers, shuffle, config.seed, rank, world_size,
        drop_last, pin_memory, timeout, name=f"{config.type}/{split}", prefetch_thread=workers != num_workers,
    )  # fmt: skip


def text_batches(dataset: VLDataset, tokenizer: Any, batch_size: int = 256, max_text_len: int = 40) -> Iterator[Batch]:
    """The captions of a retrieval dataset (``mode: images``) as token batches, with
    ``image_index`` = the image each caption belongs to (``dataset.txt2img``)."""
    if dataset.texts is None or dataset.txt2img is None:
        raise ValueError("text_batches needs a dataset indexed in 'images' mode (retrieval evaluation)")
    for start in range(0, len(dataset.texts), batch_size):
        texts = dataset.texts[start : start + batch_size]
        samples = [
            {"text": t, "image_index": dataset.txt2img[start + k], "meta": {"text_index": start + k}}
            for k, t in enumerate(texts)
        ]
        yield collate(samples, tokenizer, max_text_len)
