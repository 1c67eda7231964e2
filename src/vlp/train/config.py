"""Optimizer, schedule and run settings of a recipe."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class OptimConfig:
    name: Literal["adamw"] = "adamw"
    lr: float = 1e-4
    weight_decay: float = 0.02
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 turns clipping off
    # per-module learning rates: {"vision": 1e-5} multiplies nothing, it sets the lr
    module_lr: dict[str, float] = field(default_factory=dict)
    freeze: list[str] = field(default_factory=list)  # parameter-name prefixes kept frozen (LiT)


@dataclass
class ScheduleConfig:
    name: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 32  # per rank, per micro-step
    grad_accum: int = 1
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    grad_checkpointing: bool = False
    compile: bool = False
    distributed: Literal["ddp", "fsdp"] = "ddp"
    num_workers: int = 2
    max_bad_steps: int = 5  # non-finite losses in a row before the run aborts
