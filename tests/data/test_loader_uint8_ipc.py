"""DataLoader workers send image batches as uint8 pixels; the main process normalizes them: the batches a
training loop sees are bit for bit the float batches of one process and of per-sample ``to_tensor``."""

from __future__ import annotations

import torch
from loaders_helpers import write_manifest

from vlp.config import from_dict
from vlp.data.config import DataConfig
from vlp.data.loader import VLPLoader, build_dataset


def _config(root) -> DataConfig:
    write_manifest(root, 14)
    return from_dict(DataConfig, {"type": "manifest", "root": str(root), "paths": {"images": "images"},
                                  "image_size": 12, "seed": 3, "transform": {"hflip": 0.5, "scale": [0.3, 1.0]},
                                  "options": {"mode": "images"}})  # fmt: skip


def _batches(config: DataConfig, workers: int) -> list[tuple[list[int], torch.Tensor]]:
    loader = VLPLoader(build_dataset(config, "train"), 4, seed=3, num_workers=workers, drop_last=False)
    return [([m["index"] for m in b.meta], b.images) for b in list(loader) + list(loader)]  # two epochs


def test_worker_batches_equal_one_process_and_per_sample_float_path(tmp_path) -> None:
    config = _config(tmp_path)
    in_process = _batches(config, 0)
    with_workers = _batches(config, 2)
    assert [ids for ids, _ in with_workers] == [ids for ids, _ in in_process] and len(in_process) == 8
    dataset = build_dataset(config, "train")
    for epoch, chunk in ((0, in_process[:4]), (1, in_process[4:])):
        dataset.set_epoch(epoch)
        for (ids, images), (_, worker_images) in zip(chunk, with_workers[4 * epoch : 4 * epoch + 4]):
            # the previous path: each sample normalized on its own by to_tensor in __getitem__
            reference = torch.stack([dataset[i]["image"] for i in ids])
            assert reference.dtype == torch.float32 and reference.shape[1:] == (3, 12, 12)
            assert torch.equal(images, reference)
            assert worker_images.dtype == torch.float32 and worker_images.is_contiguous()
            assert torch.equal(worker_images, reference)


def test_workers_hand_over_uint8_pixels(tmp_path) -> None:
    config = _config(tmp_path)
    loader = VLPLoader(build_dataset(config, "train"), 4, seed=3, num_workers=2, drop_last=False)
    items = list(loader._dataloader())
    assert len(items) == 4
    for item in items:
        # (B, H, W, 3) uint8: a quarter of the float32 bytes through shared memory
        assert item.batch.images.dtype == torch.uint8 and tuple(item.batch.images.shape[1:]) == (12, 12, 3)
