"""Deterministic, resumable, distributed sampling for map-style datasets.

The order of an epoch depends only on (seed, epoch): a ``torch.randperm`` drawn
from a generator seeded with ``seed + epoch`` (as ``DistributedSampler`` does).
The permutation is padded (by wrapping around) or, with ``drop_last``, cut to a
multiple of ``world_size``; rank ``r`` takes positions ``r, r + W, r + 2W, ...``,
so without padding every sample is seen exactly once per epoch across ranks.

The position is (epoch, samples consumed by this rank); a sampler restored
with :meth:`load_state_dict` yields exactly the indices the original would
have yielded next. The loader advances ``consumed`` by what it has *delivered*
(not what DataLoader workers prefetched), so a saved position is exact.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


def resolve_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """Explicit values win; otherwise torch.distributed's when it is initialised; otherwise (0, 1)."""
    if rank is None or world_size is None:
        if dist.is_available() and dist.is_initialized():
            rank = dist.get_rank() if rank is None else rank
            world_size = dist.get_world_size() if world_size is None else world_size
        else:
            rank = 0 if rank is None else rank
            world_size = 1 if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return rank, world_size


class ResumableSampler(Sampler[int]):
    """Indices of one rank for the current epoch, starting after ``consumed`` of them."""

    def __init__(
        self,
        size: int,
        shuffle: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,
    ) -> None:
        self.size = size
        self.shuffle = shuffle
        self.seed = seed
        self.rank, self.world_size = resolve_rank(rank, world_size)
        self.drop_last = drop_last
        self.epoch = 0
        self.consumed = 0

    def epoch_indices(self, epoch: int | None = None) -> list[int]:
        """All indices this rank gets in ``epoch`` (default: the current one)."""
        epoch = self.epoch if epoch is None else epoch
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        if self.drop_last:
            order = order[: len(order) - len(order) % self.world_size]
        elif order and len(order) % self.world_size:
            pad = self.world_size - len(order) % self.world_size
            order = order + (order * (pad // len(order) + 1))[:pad]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices()[self.consumed :])

    def __len__(self) -> int:
        return max(self.per_epoch - self.consumed, 0)

    @property
    def per_epoch(self) -> int:
        """Samples this rank gets in a whole epoch."""
        if self.drop_last:
            return self.size // self.world_size
        return -(-self.size // self.world_size)

    def set_epoch(self, epoch: int, consumed: int = 0) -> None:
        self.epoch = epoch
        self.consumed = consumed

    def advance(self, count: int) -> None:
        """Record that ``count`` more indices were delivered to the training loop."""
        self.consumed += count

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed, "seed": self.seed, "size": self.size,
                "world_size": self.world_size}  # fmt: skip

    def load_state_dict(self, state: dict[str, int]) -> None:
        for key in ("size", "world_size", "seed"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(
                    f"sampler state has {key}={state[key]} but this sampler has {getattr(self, key)}; "
                    "an exact resume needs the same dataset, seed and number of ranks"
                )
        self.epoch = int(state["epoch"])
        self.consumed = int(state["consumed"])
