"""ALBEF / BLIP's queue of momentum features: MoCo-style extra ITC negatives and distillation targets.

``FeatureQueue(size)`` keeps the last ``size`` image and text embeddings of the
momentum model (and their ``batch.image_index``, ``-1`` where a batch had
none) in a ring buffer. :class:`vlp.objectives.ITC` reads it as extra columns
of its similarity matrices and then enqueues the momentum features of the
*global* batch (gathered from every rank without gradient), so every rank holds
the same queue, as in ALBEF's ``concat_all_gather`` + ``_dequeue_and_enqueue``.

Unlike ALBEF, which starts from random unit vectors, slots never written are
not used: the columns are only the ``filled`` entries. The buffers (features,
ids and ``count``, the number of entries ever enqueued, from which the write
position follows) are registered buffers of the objective, so they are in the
checkpoint and a resumed run sees the same queue. The embedding width is only
known at the first forward: the buffers start empty and are sized then, or by
``load_state_dict`` from a checkpoint.
"""

from __future__ import annotations

import torch
from torch import nn

from vlp.config import ConfigError


class FeatureQueue(nn.Module):
    """Ring buffer of ``size`` (image, text, id) entries; ``columns()`` returns the filled ones."""

    def __init__(self, size: int) -> None:
        super().__init__()
        if size <= 0:
            raise ValueError(f"queue size must be > 0, got {size}")
        self.size = size
        self.register_buffer("image", torch.zeros(0, 0))
        self.register_buffer("text", torch.zeros(0, 0))
        self.register_buffer("ids", torch.zeros(0, dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        # a host-side copy of ``count`` so that a step needs no device->host sync; re-read after loading
        self._count: int | None = 0

    def _allocate(self, dim: int, like: torch.Tensor) -> None:
        # assign .data, not a new tensor: a DDP wrapper keeps references to the buffer objects
        self.image.data = torch.zeros(self.size, dim, device=like.device)
        self.text.data = torch.zeros(self.size, dim, device=like.device)
        self.ids.data = torch.full((self.size,), -1, dtype=torch.long, device=like.device)

    def entries(self) -> int:
        """How many entries were ever enqueued (the ``count`` buffer, read from the device once after loading)."""
        if self._count is None:
            self._count = int(self.count)
        return self._count

    @property
    def filled(self) -> int:
        """How many slots hold features (``min(count, size)``)."""
        return min(self.entries(), self.size)

    def columns(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(image (Q, E), text (Q, E), ids (Q,))`` of the ``Q = filled`` stored entries (views into the
        buffers: use them before the next :meth:`enqueue`, as ITC does by concatenating them, which copies);
        ``like`` is a ``(N, E)`` batch of features (it sizes the empty queue and is checked against it)."""
        self._check(like)
        q = self.filled
        return self.image[:q], self.text[:q], self.ids[:q]

    def _check(self, features: torch.Tensor) -> None:
        if self.image.numel() == 0:
            self._allocate(features.shape[1], features)
        if features.shape[1] != self.image.shape[1]:
            raise ConfigError(
                f"objectives.itc.queue_size: the queue holds {self.image.shape[1]}-d features (from the checkpoint "
                f"or an earlier step) but the model's embeddings are {features.shape[1]}-d"
            )

    @torch.no_grad()
    def enqueue(self, image: torch.Tensor, text: torch.Tensor, ids: torch.Tensor | None) -> None:
        """Write the ``(N, E)`` features (and ``(N,)`` ids) after the last entry, wrapping around."""
        self._check(image)
        n = image.shape[0]
        if ids is None:
            ids = torch.full((n,), -1, dtype=torch.long, device=image.device)
        if n > self.size:  # only the newest `size` entries survive
            image, text, ids, skipped = image[-self.size :], text[-self.size :], ids[-self.size :], n - self.size
        else:
            skipped = 0
        count = self.entries()
        start = (count + skipped) % self.size
        slots = (torch.arange(image.shape[0], device=image.device) + start) % self.size
        self.image.index_copy_(0, slots, image.detach().to(self.image.dtype))
        self.text.index_copy_(0, slots, text.detach().to(self.text.dtype))
        self.ids.index_copy_(0, slots, ids.detach().to(torch.long))
        self._count = count + n
        self.count.fill_(self._count)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors):
        image = state_dict.get(prefix + "image")
        if image is not None and image.numel() > 0:
            if image.shape[0] != self.size:
                errors.append(
                    f"{prefix}image: the checkpoint's queue has {image.shape[0]} entries but "
                    f"objectives.itc.queue_size is {self.size}"
                )
                return
            if self.image.shape != image.shape:  # size the lazy buffers so that loading can copy into them
                self._allocate(image.shape[1], self.image)
        elif image is not None:  # saved before the first step: start empty again
            self.image.data, self.text.data = self.image.new_zeros(0, 0), self.text.new_zeros(0, 0)
            self.ids.data = self.ids.new_zeros(0)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors)
        self._count = None
