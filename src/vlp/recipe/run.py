"""The run sections of a recipe: ``optim``, ``schedule`` and ``train``. Values are checked when the
recipe is read, so that a bad setting fails before any model is built, naming the dotted key.
They live with the recipe (not in :mod:`vlp.train`) because every layer that reads a recipe
needs them, and the training engine sits above those layers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


def _check(ok: bool, message: str) -> None:
    # from_dict turns ValueError into a ConfigError prefixed with the section name
    if not ok:
        raise ValueError(message)


@dataclass
class OptimConfig:
    name: Literal["adamw"] = "adamw"
    lr: float = 1e-4
    weight_decay: float = 0.02  # applied to matrices only: never to norms, biases, embeddings, temperature
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 turns clipping off
    # per-module learning rates: {"vision": 1e-5} sets (does not multiply) the lr of every
    # parameter whose name starts with "vision."; the longest matching prefix wins
    module_lr: dict[str, float] = field(default_factory=dict)
    freeze: list[str] = field(default_factory=list)  # parameter-name prefixes kept frozen (LiT)

    def __post_init__(self) -> None:
        _check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        _check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        _check(self.grad_clip >= 0, f"grad_clip must be >= 0 (0 = off), got {self.grad_clip}")
        _check(all(0 <= b < 1 for b in self.betas), f"betas must lie in [0, 1), got {self.betas}")
        for prefix, lr in self.module_lr.items():
            _check(lr >= 0, f"module_lr.{prefix} must be >= 0, got {lr}")


@dataclass
class ScheduleConfig:
    # cosine / linear decay from the peak lr to min_lr_ratio * lr after a linear warmup
    name: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        _check(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")
        _check(0 <= self.min_lr_ratio <= 1, f"min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")


@dataclass
class TrainConfig:
    steps: int = 1000  # optimizer steps
    batch_size: int = 32  # per rank, per micro-step
    grad_accum: int = 1  # micro-steps per optimizer step
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # bf16 = autocast; fp16 = autocast + grad scaler (GPU)
    seed: int = 0
    device: str = "auto"  # auto (cuda:LOCAL_RANK if available, else cpu), cpu, cuda
    log_every: int = 10
    checkpoint_every: int = 500  # 0 = only at the end
    keep_checkpoints: int = 3
    grad_checkpointing: bool = False
    compile: bool = False  # torch.compile the model in place
    distributed: Literal["ddp", "fsdp"] = "ddp"
    find_unused_parameters: bool = False  # DDP: set when some parameters get no gradient in a step
    num_workers: int = 2
    max_bad_steps: int = 5  # non-finite losses in a row before the run aborts
    ema_decay: float = 0.0  # engine-kept EMA of the weights (saved as ema.safetensors); 0 = off
    # cap the EMA decay at (1 + n) / (10 + n) after n steps, so a short run's average is not mostly the init
    ema_warmup: bool = False
    # a time budget besides train.steps; 0 = none. The run checkpoints and stops when it is spent, and the
    # lr decay follows whichever of steps and time is further along, so a budgeted run ends annealed on any
    # machine (at the price of an lr that depends on the machine's speed: no exact resume then)
    time_budget_minutes: float = 0.0
    # wall: elapsed time. cpu: this process's CPU time / torch threads, i.e. the wall time the run would
    # take with its threads to itself (for a machine shared with other jobs)
    budget_clock: Literal["wall", "cpu"] = "wall"
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    progress: bool = True  # tqdm progress bar on rank 0
    tensorboard: bool = True  # write TensorBoard events when tensorboard is installed
    # weights a pretraining run starts from: a model folder, checkpoint, run folder or .safetensors
    # (fine-tuning takes `init:` / --init instead); a resumed run continues from its own checkpoint
    init: str = ""
    # only weights whose names start with one of these prefixes, e.g. [vision] for an image tower
    # trained elsewhere (ALBEF starts its ViT from ImageNet weights); empty = every weight that fits
    init_parts: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check(self.steps > 0, f"steps must be > 0, got {self.steps}")
        _check(self.batch_size > 0, f"batch_size must be > 0, got {self.batch_size}")
        _check(self.grad_accum >= 1, f"grad_accum must be >= 1, got {self.grad_accum}")
        _check(self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}")
        _check(self.checkpoint_every >= 0, f"checkpoint_every must be >= 0 (0 = end only), got {self.checkpoint_every}")
        _check(self.keep_checkpoints >= 1, f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        _check(self.max_bad_steps >= 1, f"max_bad_steps must be >= 1, got {self.max_bad_steps}")
        _check(0 <= self.ema_decay < 1, f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        budget = self.time_budget_minutes
        _check(budget >= 0, f"time_budget_minutes must be >= 0 (0 = none), got {budget}")
        _check(self.threads >= 0, f"threads must be >= 0 (0 = torch's default), got {self.threads}")
        _check(not self.init_parts or bool(self.init), f"init_parts {self.init_parts} needs init (a weights path)")
        _check(self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers}")
        _check(
            self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
            f"device must be auto, cpu or cuda[:N], got {self.device!r}",
        )
