"""What a DataLoader worker hands over: image batches built in shared memory (no second copy)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from vlp.data.collate import collate


def _images_shared(samples: list[dict]) -> tuple[bool, torch.Tensor]:
    images = collate(samples).images
    return images.is_shared(), images  # is_shared() before pickling moves anything


def test_worker_collate_stacks_images_into_shared_memory() -> None:
    samples = [{"image": torch.full((3, 4, 4), float(i)), "meta": {}} for i in range(6)]
    loader = DataLoader(samples, batch_size=3, num_workers=1, collate_fn=_images_shared)
    results = list(loader)
    assert [shared for shared, _ in results] == [True, True]
    expected = torch.stack([s["image"] for s in samples])
    assert torch.equal(torch.cat([images for _, images in results]), expected)
    assert not collate(samples[:2]).images.is_shared()  # in the main process: a plain stack
