"""A resumable loader for any map-style dataset and collate function.

``vlp.data.build_loader`` is the loader for recipes' datasets; this one serves
custom datasets (a user's own fine-tuning data, tests, benchmarks) with the same
contract the engine relies on: ``state_dict() -> {"epoch", "samples"}`` and an
exact restart from there. Sampling is ``vlp.data``'s :class:`ResumableSampler`:
the order depends only on (seed, epoch) and rank ``r`` takes every
``world_size``-th index, so the ranks' k-th batches together are the k-th
batch of one process with a ``world_size`` times larger batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from vlp.data.sampler import ResumableSampler


def batch_len(batch: Any) -> int:
    """Number of samples in a batch (a ``Batch``, a tensor, or a tuple/dict of tensors)."""
    if isinstance(batch, (list, tuple)):
        return batch_len(batch[0]) if batch else 0
    if isinstance(batch, dict):
        return batch_len(next(iter(batch.values()))) if batch else 0
    return len(batch)


class ResumableLoader:
    """``DataLoader`` over a resumable sampler that counts the samples it delivered.

    DataLoader workers are seeded from ``(seed, epoch)``, never from the global
    RNG, so creating an iterator does not disturb the training process's random
    stream (which a resumed run restores exactly).
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        *,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        drop_last: bool = True,
        pin_memory: bool = False,
    ) -> None:
        self.batch_size = batch_size
        self.seed = seed
        self.drop_last = drop_last
        self.sampler = ResumableSampler(len(dataset), shuffle, seed, rank, world_size, drop_last)
        self.generator = torch.Generator()
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=self.sampler,
            collate_fn=collate_fn,
            num_workers=num_workers,
            drop_last=drop_last,
            pin_memory=pin_memory,
            generator=self.generator,
            persistent_workers=num_workers > 0,
        )
        self.epoch = 0
        self.samples = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.samples = epoch, 0

    def __iter__(self) -> Iterator[Any]:
        self.sampler.set_epoch(self.epoch, self.samples)
        self.generator.manual_seed(self.seed * 1_000_003 + self.epoch)
        for batch in self.loader:
            self.samples += batch_len(batch)
            yield batch

    def __len__(self) -> int:
        """Batches in a whole epoch on this rank."""
        per_epoch = self.sampler.per_epoch
        return per_epoch // self.batch_size if self.drop_last else -(-per_epoch // self.batch_size)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "samples": self.samples}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.samples = int(state["epoch"]), int(state["samples"])
