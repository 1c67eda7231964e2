"""The training loop: one readable function, ``Trainer.fit``.

It trains any ``nn.Module`` whose ``forward(batch)`` returns ``(loss, logs)``
(``logs``: a dict of floats or 0-d tensors) over any iterable of batches that
have ``.to(device)`` — ``vlp.objectives.Pretraining`` and the task modules, fed
by the ``vlp.data`` loaders. If the module has ``after_step()`` it is called
after each optimizer step (momentum/EMA models). If the loader has
``state_dict()`` / ``load_state_dict()`` its position is checkpointed;
otherwise a resumed run replays the epoch up to where it stopped.

Each optimizer step: ``grad_accum`` micro-steps of forward (under autocast for
bf16/fp16) and backward (gradient sync only on the last), unscale + clip, one
all-reduce of a few numbers (loss, non-finite flags, stop request, samples) that
keeps ranks in agreement, then the optimizer step or — for a non-finite loss —
a skipped step. Checkpoints are written only between optimizer steps, so a
resumed run continues exactly where the saved one was.

``train.time_budget_minutes`` ends a run early: the budget spent (the ranks'
mean, agreed in the same all-reduce, and carried across resumes in the
checkpoint) also moves the lr decay along, and when it is spent the run
checkpoints and stops with ``stopped_by = "time budget"``.
"""

from __future__ import annotations

import json
import math
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from vlp.config import ConfigError
from vlp.io.checkpoints import CheckpointError, CheckpointManager
from vlp.layers.ema import WeightEMA, warmup_decay
from vlp.recipe.run import OptimConfig, ScheduleConfig, TrainConfig
from vlp.train import distributed as dist_utils
from vlp.train.guards import (
    NonFiniteGuard,
    StopSignals,
    TrainingAborted,
    is_out_of_memory,
    out_of_memory_message,
    sample_ids,
)
from vlp.train.loader import batch_len
from vlp.train.logging import MetricsLog, Progress, summary_text
from vlp.train.optim import build_optimizer, freeze
from vlp.train.rng import capture_rng, restore_rng, seed_everything
from vlp.train.run_dir import check_resume_recipe, check_run_dir, no_checkpoint_error, prepare_run_dir
from vlp.train.schedule import LRSchedule

_AMP = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# what _restore reads from a checkpoint's state.pt (see _save)
_STATE_KEYS = ("step", "epoch", "batches_in_epoch", "optimizer", "schedule", "scaler", "guard", "ranks")
BUDGET_STOP = "time budget"  # TrainResult.stopped_by when train.time_budget_minutes ended the run (not a signal)


@dataclass
class TrainResult:
    run_dir: str
    start_step: int
    step: int
    total_steps: int
    loss: float | None
    skipped_steps: int
    seconds: float
    samples_per_s: float
    stopped_by: str | None
    checkpoint: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def enable_grad_checkpointing(module: nn.Module) -> int:
    """Turn on activation checkpointing wherever the model supports it; returns how many places."""
    if callable(getattr(module, "set_grad_checkpointing", None)):
        module.set_grad_checkpointing(True)
        return 1
    count = 0
    for sub in module.modules():
        if isinstance(getattr(sub, "grad_checkpointing", None), bool):  # vlp.layers.Transformer and friends
            sub.grad_checkpointing = True
            count += 1
    return count


def set_epoch(loader: Any, epoch: int) -> None:
    """Tell the loader (or its sampler) which epoch starts, as DistributedSampler needs."""
    batch_sampler = getattr(loader, "batch_sampler", None)
    for candidate in (loader, getattr(loader, "sampler", None), batch_sampler, getattr(batch_sampler, "sampler", None)):
        if callable(getattr(candidate, "set_epoch", None)):
            candidate.set_epoch(epoch)
            return


def budget_clock(kind: str) -> Callable[[], float]:
    """Seconds on the clock of ``train.budget_clock``: ``wall`` (elapsed) or ``cpu`` (this process's CPU time
    over its torch threads: the wall time the run would take with its threads to itself)."""
    if kind == "cpu":
        threads = max(1, torch.get_num_threads())
        return lambda: time.process_time() / threads
    return time.perf_counter


def _on_main(info: dist_utils.DistInfo, fn, *args: Any) -> Any:
    """Run ``fn`` on rank 0 and hand its result (or its ConfigError) to every rank,
    so that an error on rank 0 does not leave the others waiting forever."""
    result: Any = None
    if info.is_main:
        try:
            result = ("ok", fn(*args))
        except (ConfigError, OSError) as err:
            result = ("error", f"{err}")
    result = dist_utils.broadcast_object(result)
    if result[0] == "error":
        raise ConfigError(result[1])
    return result[1]


class Trainer:
    """Trains ``module`` on ``loader`` into ``run_dir``; see the module docstring."""

    def __init__(
        self,
        module: nn.Module,
        loader: Any,
        *,
        train: TrainConfig,
        optim: OptimConfig,
        schedule: ScheduleConfig,
        run_dir: str | Path,
        recipe: dict[str, Any] | None = None,
        resume: bool = False,
        overwrite: bool = False,
        dist: dist_utils.DistInfo | None = None,
        resume_may_change: tuple[str, ...] = (),
    ) -> None:
        """``resume_may_change``: recipe keys besides :data:`~vlp.train.run_dir.RESUME_MAY_CHANGE` that a
        resumed run may change (settings of what the job does after training)."""
        self.module, self.loader = module, loader
        self.resume_may_change = resume_may_change
        self.train, self.optim_cfg, self.schedule_cfg = train, optim, schedule
        self.run_dir = Path(run_dir)
        self.recipe = recipe
        self.resume, self.overwrite = resume, overwrite
        self.info = dist or dist_utils.init_distributed(train.device)
        self.epoch = 0
        self.batches_in_epoch = 0  # batches this rank took from the current epoch
        self._iter = None
        self._replay = 0  # batches to skip on the first iteration (loaders without state_dict)
        self._pending: Any = None  # the first batch, drawn in _setup to check the data before any file is written
        self.budget_used = 0.0  # seconds of train.time_budget_minutes spent (restored on resume)

    # ----------------------------------------------------------------- set-up
    def _setup(self) -> None:
        info, train = self.info, self.train
        if train.threads:
            torch.set_num_threads(train.threads)
        if train.precision == "fp16" and info.device.type != "cuda":
            raise ConfigError("train.precision: fp16 needs a CUDA device (with a grad scaler); use bf16 on CPU")
        if self.schedule_cfg.warmup_steps > train.steps:
            dist_utils.main_print(
                f"warning: schedule.warmup_steps={self.schedule_cfg.warmup_steps} is more than "
                f"train.steps={train.steps}: the run ends during warm-up and never reaches the peak lr "
                f"optim.lr={self.optim_cfg.lr:g} (at most {train.steps / self.schedule_cfg.warmup_steps:.0%} of it)"
            )
        # Everything is checked (the folder, the recipe against the checkpoint's, the checkpoint, the first
        # batch) before anything is written into the run folder: a refused or failing start leaves it as it was.
        run_args = {"resume": self.resume, "overwrite": self.overwrite}
        resuming = _on_main(info, lambda: check_run_dir(self.run_dir, **run_args))
        module = self.module
        self.frozen = freeze(module, self.optim_cfg.freeze)
        if train.grad_checkpointing and enable_grad_checkpointing(module) == 0:
            dist_utils.main_print("train.grad_checkpointing: this model has no checkpointable blocks; ignored")
        module.to(info.device)
        self.model = dist_utils.wrap_model(module, train.distributed, info, train.find_unused_parameters)
        if train.compile:
            self.model.compile()  # in place, after wrapping (as DDP/FSDP advise): parameter names stay the same
        self.model.train()
        self.optimizer = build_optimizer(module, self.optim_cfg)
        self.params = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.schedule = LRSchedule(self.optimizer, self.schedule_cfg, train.steps)
        self.scaler = torch.amp.GradScaler(info.device.type, enabled=train.precision == "fp16")
        self.ema = WeightEMA(module.named_parameters(), train.ema_decay) if train.ema_decay > 0 else None
        self.guard = NonFiniteGuard(train.max_bad_steps)
        self.checkpoints = CheckpointManager(self.run_dir / "checkpoints", train.keep_checkpoints)
        self.step = 0
        rng_state = self._restore() if resuming else None
        if self.step == 0:
            seed_everything(train.seed + info.rank)  # ranks differ in dropout/masking, not in data order
            set_epoch(self.loader, self.epoch)
        if rng_state is not None:
            restore_rng(rng_state)
        if self.step < train.steps:
            # the batch the first step would draw next anyway, so the random stream is the same
            self._pending = self._first_batch()
        stream = capture_rng()
        _on_main(info, lambda: prepare_run_dir(self.run_dir, **run_args))
        if self.recipe is not None and info.is_main:
            text = yaml.safe_dump(self.recipe, sort_keys=False)
            (self.run_dir / "recipe.yaml").write_text(text, encoding="utf-8")
        self.metrics = MetricsLog(
            self.run_dir, enabled=info.is_main, resume_step=self.step, tensorboard=train.tensorboard
        )
        self.progress = Progress(train.steps, self.step, is_main=info.is_main, show_bar=train.progress)
        restore_rng(stream)  # nothing in the writes above may draw from the training stream

    def _first_batch(self) -> Any:
        """Draw the first batch on every rank; a data error on any rank stops every rank (nothing written yet)."""
        batch, error = None, None
        try:
            batch = self._next_batch()
        except (ConfigError, OSError) as err:
            error = f"{err}"
        errors = [e for e in dist_utils.all_gather_objects(error) if e]
        if errors:
            raise ConfigError(errors[0])
        return batch

    def _restore(self) -> dict[str, Any] | None:
        """Load the newest valid checkpoint; returns this rank's RNG state to restore last."""
        info = self.info

        def find(before: int | None) -> str | None:
            warn = lambda msg: dist_utils.main_print(f"warning: {msg}")  # noqa: E731
            path = self.checkpoints.latest_valid(warn=warn, before=before)
            if path is None and self.checkpoints.list():
                raise ConfigError(
                    f"{self.checkpoints.root}: every checkpoint is corrupt or unreadable; start with --overwrite"
                )
            return str(path) if path else None

        before = None
        while True:
            path = _on_main(info, find, before)
            if path is None:  # check_run_dir refuses this before anything is built; kept for a folder emptied since
                raise no_checkpoint_error(self.run_dir)
            # A checkpoint can match its manifest and still not load (written by another version, or a
            # disk that lied before the manifest was hashed): fall back to the one before, as for a corrupt one.
            loaded, error = None, None
            try:
                loaded = self.checkpoints.load(Path(path))
                missing = [key for key in _STATE_KEYS if key not in loaded[1]]
                if missing:
                    error = f"{Path(path) / 'state.pt'} lacks {', '.join(missing)}"
            except CheckpointError as err:
                error = f"{err}"
            errors = [e for e in dist_utils.all_gather_objects(error) if e]
            if not errors:
                break
            dist_utils.main_print(f"warning: checkpoint {path} cannot be loaded ({errors[0]}); trying the one before")
            before = self.checkpoints.step_of(Path(path))
        weights, state, ema_state = loaded
        if self.recipe is not None and state.get("recipe"):
            check_resume_recipe(self.run_dir, state["recipe"], self.recipe, self.resume_may_change)
        dist_utils.load_model_state(self.model, weights)
        dist_utils.load_optimizer_state(self.model, self.optimizer, state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.scaler.load_state_dict(state["scaler"])
        self.guard.load_state_dict(state["guard"])
        if self.ema is not None:
            if ema_state is None:
                dist_utils.main_print("warning: checkpoint has no EMA weights; EMA restarts from the current weights")
            else:
                self.ema.load_state_dict(ema_state)
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.batches_in_epoch = int(state["batches_in_epoch"])
        self.budget_used = float(state.get("budget_used_s", 0.0))  # absent in checkpoints of older versions
        ranks = state["ranks"]
        if len(ranks) != info.world_size:
            dist_utils.main_print(
                f"warning: checkpoint was written by {len(ranks)} rank(s), this run has {info.world_size}; "
                "random streams are re-seeded and the data order of the epoch may differ"
            )
            seed_everything(self.train.seed + info.rank + 1_000_003 * self.step)
            mine = None
        else:
            mine = ranks[info.rank]
        loader_state = mine["loader"] if mine else None
        if loader_state is not None and callable(getattr(self.loader, "load_state_dict", None)):
            self.loader.load_state_dict(loader_state)
        else:
            set_epoch(self.loader, self.epoch)
            self._replay = self.batches_in_epoch
        dist_utils.main_print(f"resumed from {path} (step {self.step})")
        return mine["rng"] if mine else None

    # ------------------------------------------------------------------ data
    def _next_batch(self) -> Any:
        if self._pending is not None:
            batch, self._pending = self._pending, None
            return batch
        while True:
            fresh = self._iter is None
            try:
                if fresh:
                    # A DataLoader without a generator draws its workers' base seed from the global
                    # torch RNG when its iterator starts. Fork the RNG around that, so the training
                    # stream (dropout, masking, negatives) is the same whether an epoch starts here
                    # or in a resumed run mid-epoch.
                    with torch.random.fork_rng(devices=[]):
                        self._iter = iter(self.loader)
                        for _ in range(self._replay):  # only for loaders that cannot seek
                            next(self._iter)
                        self._replay = 0
                        batch = next(self._iter)
                else:
                    batch = next(self._iter)
                self.batches_in_epoch += 1
                return batch
            except StopIteration:
                if self.batches_in_epoch == 0:  # a whole epoch without one batch
                    raise ConfigError(
                        "the data loader yields no batches (fewer samples than train.batch_size x ranks?)"
                    ) from None
                self.epoch += 1
                self.batches_in_epoch = 0
                set_epoch(self.loader, self.epoch)
                self._iter = None

    # ------------------------------------------------------------ checkpoints
    def _save(self) -> str:
        """Write a checkpoint of the current step (every rank takes part)."""
        weights = dist_utils.full_model_state(self.model)
        optim_state = dist_utils.full_optimizer_state(self.model, self.optimizer)
        ema_state = self.ema.state_dict() if self.ema is not None else None
        loader_state = self.loader.state_dict() if callable(getattr(self.loader, "state_dict", None)) else None
        ranks = dist_utils.all_gather_objects({"rng": capture_rng(), "loader": loader_state})

        def write() -> str:
            state = {
                "step": self.step,
                "epoch": self.epoch,
                "batches_in_epoch": self.batches_in_epoch,
                "optimizer": optim_state,
                "schedule": self.schedule.state_dict(),
                "scaler": self.scaler.state_dict(),
                "guard": self.guard.state_dict(),
                "budget_used_s": self.budget_used,
                "ranks": ranks,
                "world_size": self.info.world_size,
                "recipe": self.recipe or {},
            }
            return str(self.checkpoints.save(self.step, weights, state, ema_state))

        return _on_main(self.info, write)

    # ------------------------------------------------------------------ loop
    def fit(self) -> TrainResult:
        """Train until ``train.steps`` optimizer steps (or a stop signal); returns a summary."""
        self._setup()
        train, info, device = self.train, self.info, self.info.device
        accum = train.grad_accum
        amp_dtype = _AMP[train.precision]
        autocast = torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None)
        after_step = getattr(self.module, "after_step", None)
        start_step, start_time = self.step, time.perf_counter()
        interval_start, interval_samples, total_samples = start_time, 0.0, 0.0
        loss_value, stopped_by, last_checkpoint = None, None, None
        saved_step = self.step  # a resumed run's step has its checkpoint; step 0 needs none
        budget_s = train.time_budget_minutes * 60.0
        clock = budget_clock(train.budget_clock)
        clock_start, used_before = clock(), self.budget_used
        try:
            with StopSignals() as signals:
                while self.step < train.steps:
                    if budget_s and self.budget_used >= budget_s:  # the agreed value of the last all-reduce
                        stopped_by = BUDGET_STOP
                        break
                    lr_factor = self.schedule.apply(self.step, self.budget_used / budget_s if budget_s else 0.0)
                    loss_sum, logs_sum, micro, n_samples = self._forward_backward(autocast)
                    dist_utils.sync_replicated_grads(self.model)  # FSDP's unsharded scalars
                    self.scaler.unscale_(self.optimizer)  # no-op unless fp16
                    grad_norm = torch.zeros((), device=device)
                    if self.optim_cfg.grad_clip > 0:
                        grad_norm = dist_utils.clip_grad_norm(self.params, self.optim_cfg.grad_clip).float()
                    # one small all-reduce (and the step's only host sync) keeps the ranks' decisions identical
                    used = used_before + clock() - clock_start
                    flags = torch.tensor([float(signals.requested is not None), float(n_samples), used])
                    stats = torch.cat(
                        [
                            torch.stack([loss_sum, grad_norm]),
                            torch.stack([~torch.isfinite(loss_sum), ~torch.isfinite(grad_norm)]).float(),
                            flags.to(device, non_blocking=True),
                        ]
                    )
                    dist_utils.all_reduce_sum(stats)
                    loss_total, norm_total, bad_loss, bad_grad, stop, samples, used = stats.tolist()
                    loss_value = loss_total / (accum * info.world_size)
                    self.budget_used = used / info.world_size  # the ranks' mean: one lr and one stop for all

                    # fp16 overflow in the gradients is the scaler's business, not an error
                    if bad_loss > 0 or (bad_grad > 0 and not self.scaler.is_enabled()):
                        bad = [m for loss_k, m in micro if not math.isfinite(loss_k.item())] or [m for _, m in micro]
                        ids = [i for meta in bad for i in sample_ids(meta)]
                        self.progress.write(self.guard.bad(self.step + 1, ids, info.rank))  # raises at the limit
                        self.scaler.update()
                    else:
                        self.scaler.step(self.optimizer)
                        self.scaler.update()
                        self.guard.good()
                        if callable(after_step):
                            after_step()
                        if self.ema is not None:
                            # step + 1 updates so far, this one included
                            warm = warmup_decay(train.ema_decay, self.step + 1) if train.ema_warmup else None
                            self.ema.update(decay=warm)
                    self.optimizer.zero_grad(set_to_none=True)
                    self.step += 1
                    interval_samples += samples
                    total_samples += samples

                    rate = None
                    if self.step % train.log_every == 0 or self.step == train.steps:
                        now = time.perf_counter()
                        rate = interval_samples / max(now - interval_start, 1e-9)
                        record = {"step": self.step, "epoch": self.epoch}
                        record.update(self._reduce_logs(logs_sum, accum))
                        record.update(loss=loss_value, lr=self.optim_cfg.lr * lr_factor, samples_per_s=rate)
                        if self.optim_cfg.grad_clip > 0:
                            record["grad_norm"] = norm_total / info.world_size
                        record.update(skipped=self.guard.skipped, elapsed_s=now - start_time)
                        if budget_s:
                            record["budget_used_s"] = self.budget_used
                        self.metrics.write(record)
                        interval_start, interval_samples = now, 0.0
                    budget = self.budget_used / budget_s if budget_s else None
                    self.progress.update(1, loss_value, self.optim_cfg.lr * lr_factor, rate, budget)

                    periodic = train.checkpoint_every and self.step % train.checkpoint_every == 0
                    if stop > 0 or periodic or self.step == train.steps:
                        last_checkpoint, saved_step = self._save(), self.step
                    if stop > 0:
                        name = signal.Signals(signals.requested).name if signals.requested else "a signal"
                        stopped_by = name if signals.requested else "a signal on another rank"
                        self.progress.write(f"stopped by {stopped_by} at step {self.step}; saved {last_checkpoint}")
                        break
                if stopped_by == BUDGET_STOP:
                    if saved_step != self.step:
                        last_checkpoint, saved_step = self._save(), self.step
                    self.progress.write(
                        f"time budget of {train.time_budget_minutes:g} min ({train.budget_clock} clock) spent at "
                        f"step {self.step}; saved {last_checkpoint or 'nothing new'}"
                    )
        except (RuntimeError, MemoryError) as err:
            if is_out_of_memory(err):
                raise TrainingAborted(
                    out_of_memory_message(self.step + 1, train.batch_size, train.grad_accum, err)
                ) from err
            raise
        finally:
            self.progress.close()
            self.metrics.close()

        seconds = time.perf_counter() - start_time
        result = TrainResult(
            run_dir=str(self.run_dir),
            start_step=start_step,
            step=self.step,
            total_steps=train.steps,
            loss=loss_value,
            skipped_steps=self.guard.skipped,
            seconds=seconds,
            samples_per_s=total_samples / max(seconds, 1e-9),
            stopped_by=stopped_by,
            checkpoint=last_checkpoint,
        )
        if info.is_main:
            (self.run_dir / "summary.json").write_text(json.dumps(result.to_dict(), indent=1), encoding="utf-8")
            dist_utils.main_print(summary_text(result.to_dict()))
        return result

    def _forward_backward(self, autocast: torch.autocast) -> tuple[torch.Tensor, dict[str, Any], list, int]:
        """``grad_accum`` micro-steps; gradients are synchronised only on the last.

        Returns the summed loss (on the device: no host sync here), the summed logs,
        (loss, meta) per micro-batch (to name samples if the step goes bad) and the
        number of samples.
        """
        accum = self.train.grad_accum
        loss_sum = torch.zeros((), device=self.info.device)
        logs_sum: dict[str, Any] = {}
        micro = []
        n_samples = 0
        for k in range(accum):
            batch = self._next_batch()
            n_samples += batch_len(batch)
            batch = batch.to(self.info.device, non_blocking=True)
            with dist_utils.no_grad_sync(self.model, skip=k < accum - 1):
                with autocast:
                    loss, logs = self.model(batch)
                self.scaler.scale(loss / accum).backward()
            loss = loss.detach().float()
            loss_sum += loss
            micro.append((loss, getattr(batch, "meta", None)))
            for key, value in logs.items():
                logs_sum[key] = logs_sum.get(key, 0.0) + value
        return loss_sum, logs_sum, micro, n_samples

    def _reduce_logs(self, logs_sum: dict[str, Any], accum: int) -> dict[str, float]:
        """The module's logs of this step, averaged over micro-steps and ranks."""
        if not logs_sum:
            return {}
        keys = sorted(logs_sum)
        values = torch.tensor([float(logs_sum[k]) for k in keys], dtype=torch.float64, device=self.info.device)
        dist_utils.all_reduce_sum(values)
        return {k: v / (accum * self.info.world_size) for k, v in zip(keys, values.tolist())}
