"""A small real training job for the engine tests: a 2-layer vlp Transformer that
classifies token sets, on a synthetic map-style dataset with sample ids."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from vlp.data.batch import Batch
from vlp.layers import Transformer, masked_mean
from vlp.recipe.run import OptimConfig, ScheduleConfig, TrainConfig
from vlp.train.distributed import DistInfo, init_distributed
from vlp.train.engine import Trainer, TrainResult
from vlp.train.loader import ResumableLoader

TOKENS, FEATURES, DIM, CLASSES = 4, 6, 16, 3


class ToyDataset(Dataset):
    """``size`` samples: token features (TOKENS, FEATURES) labelled by a fixed random teacher.

    Samples whose index is in ``nan_ids`` carry NaN features (a broken sample).
    """

    def __init__(self, size: int = 64, seed: int = 1234, nan_ids: tuple[int, ...] = ()) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.randn(size, TOKENS, FEATURES, generator=gen)
        teacher = torch.randn(FEATURES, CLASSES, generator=gen)
        self.y = (self.x.mean(1) @ teacher).argmax(-1)
        self.nan_ids = set(nan_ids)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, Any]:
        x = torch.full_like(self.x[i], float("nan")) if i in self.nan_ids else self.x[i]
        return {"x": x, "y": self.y[i], "id": f"toy-{i}"}


def collate(samples: list[dict[str, Any]]) -> Batch:
    return Batch(
        region_features=torch.stack([s["x"] for s in samples]),
        labels=torch.stack([s["y"] for s in samples]),
        meta=[{"id": s["id"]} for s in samples],
    )


class ToyModel(nn.Module):
    """embed -> 2-layer Transformer -> mean -> head; ``forward(batch) -> (loss, logs)``."""

    def __init__(self, dropout: float = 0.0, delay: float = 0.0, hold_at: int = 0, release: str = "") -> None:
        super().__init__()
        self.embed = nn.Linear(FEATURES, DIM)
        self.pos_embed = nn.Parameter(torch.zeros(1, TOKENS, DIM))
        self.encoder = Transformer(DIM, depth=2, heads=2, mlp_dim=32, dropout=dropout)
        self.norm = nn.LayerNorm(DIM)
        self.head = nn.Linear(DIM, CLASSES)
        self.logit_scale = nn.Parameter(torch.tensor(0.5))
        self.delay = delay  # seconds per forward
        # the hold_at-th forward waits until the file `release` exists, so that a test can signal or kill a
        # run at a known step however fast or busy the machine is
        self.hold_at, self.release, self.forwards = hold_at, release, 0
        self.after_steps = 0

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, Any]]:
        self.forwards += 1
        if self.delay:
            time.sleep(self.delay)
        if self.hold_at and self.forwards == self.hold_at:
            while not Path(self.release).exists():
                time.sleep(0.01)
        h = self.encoder(self.embed(batch.region_features) + self.pos_embed)
        logits = self.head(self.norm(masked_mean(h, None))) * self.logit_scale.exp()
        loss = nn.functional.cross_entropy(logits, batch.labels)
        acc = (logits.argmax(-1) == batch.labels).float().mean()
        return loss, {"acc": acc.detach()}

    def after_step(self) -> None:
        self.after_steps += 1


def run_toy(
    run_dir: str | Path,
    *,
    steps: int = 8,
    batch_size: int = 8,
    grad_accum: int = 1,
    lr: float = 1e-2,
    dropout: float = 0.0,
    delay: float = 0.0,
    dataset_size: int = 64,
    nan_ids: tuple[int, ...] = (),
    resume: bool = False,
    overwrite: bool = False,
    train: dict[str, Any] | None = None,
    optim: dict[str, Any] | None = None,
    schedule: dict[str, Any] | None = None,
    dist: DistInfo | None = None,
    seed: int = 0,
    plain_loader: bool = False,
    hold_at: int = 0,
    release: str = "",
) -> tuple[TrainResult, ToyModel]:
    """Build the toy job and train it with the real engine."""
    info = dist or init_distributed("cpu")
    torch.manual_seed(seed)  # same initial weights on every rank (FSDP does not broadcast them)
    model = ToyModel(dropout=dropout, delay=delay, hold_at=hold_at, release=release)
    dataset = ToyDataset(dataset_size, nan_ids=nan_ids)
    # plain_loader: a torch DataLoader without state_dict(), which the engine resumes by replay
    loader = DataLoader(dataset, batch_size, collate_fn=collate, drop_last=True) if plain_loader else None
    loader = loader or ResumableLoader(
        dataset,
        batch_size,
        collate_fn=collate,
        seed=seed,
        rank=info.rank,
        world_size=info.world_size,
    )
    train_cfg = TrainConfig(
        **{
            "steps": steps,
            "batch_size": batch_size,
            "grad_accum": grad_accum,
            "device": "cpu",
            "log_every": 1,
            "progress": False,
            "num_workers": 0,
            "seed": seed,
            **(train or {}),
        }
    )
    optim_cfg = OptimConfig(**{"lr": lr, "weight_decay": 0.01, "grad_clip": 1.0, **(optim or {})})
    schedule_cfg = ScheduleConfig(**{"name": "cosine", "warmup_steps": 2, **(schedule or {})})
    trainer = Trainer(
        model,
        loader,
        train=train_cfg,
        optim=optim_cfg,
        schedule=schedule_cfg,
        run_dir=run_dir,
        recipe={"name": "toy", "train": {"steps": steps}},  # a resumed run may change train.steps
        resume=resume,
        overwrite=overwrite,
        dist=info,
    )
    return trainer.fit(), model
