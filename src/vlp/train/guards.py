"""Guard rails of a long run: non-finite losses, out-of-memory, stop signals."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any

import torch

_ID_KEYS = ("id", "sample_id", "question_id", "ann_id", "image_id", "key", "image")


class TrainingAborted(RuntimeError):
    """The run cannot go on; the message says why and what to do."""


def sample_ids(meta: Sequence[Any] | None) -> list[str]:
    """Identifiers of a batch's samples from its ``batch.meta`` list (``id``, ``image_id``, ...)."""
    if not meta:
        return []
    ids = []
    for item in meta:
        if isinstance(item, dict):
            key = next((k for k in _ID_KEYS if k in item), None)
            ids.append(str(item[key]) if key else str(item)[:60])
        else:
            ids.append(str(item)[:60])
    return ids


class NonFiniteGuard:
    """Counts optimizer steps skipped for a non-finite loss or gradient.

    ``max_in_a_row`` consecutive bad steps abort the run: by then the weights
    or the data are broken and more steps only waste compute.
    """

    def __init__(self, max_in_a_row: int) -> None:
        self.max_in_a_row = max_in_a_row
        self.skipped = 0
        self.in_a_row = 0
        self.first_bad_step: int | None = None

    def good(self) -> None:
        self.in_a_row = 0
        self.first_bad_step = None

    def bad(self, step: int, samples: Sequence[str], rank: int = 0) -> str:
        """Record a skipped step; raises :class:`TrainingAborted` at the limit. Returns a warning line."""
        self.skipped += 1
        self.in_a_row += 1
        if self.first_bad_step is None:
            self.first_bad_step = step
        shown = ", ".join(samples[:16]) + (f", ... ({len(samples)} in all)" if len(samples) > 16 else "")
        where = f"samples on rank {rank}: {shown or '(batches carry no meta ids)'}"
        if self.in_a_row >= self.max_in_a_row:
            raise TrainingAborted(
                f"loss or gradient was not finite for {self.in_a_row} steps in a row "
                f"(steps {self.first_bad_step}..{step}); last bad step {step} had {where}. "
                "Check those samples, lower optim.lr or raise schedule.warmup_steps, or use precision "
                "fp32/bf16 instead of fp16; train.max_bad_steps sets the limit."
            )
        return f"step {step}: non-finite loss or gradient, step skipped ({self.in_a_row} in a row; {where})"

    def state_dict(self) -> dict[str, int]:
        return {"skipped": self.skipped, "in_a_row": self.in_a_row, "first_bad_step": self.first_bad_step or -1}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.skipped = int(state["skipped"])
        self.in_a_row = int(state["in_a_row"])
        first = int(state.get("first_bad_step", -1))
        self.first_bad_step = None if first < 0 else first


_OOM_TEXT = ("out of memory", "can't allocate memory", "cannot allocate memory")


def is_out_of_memory(err: BaseException) -> bool:
    """A GPU OOM, or the CPU allocator's failure (a RuntimeError that says so)."""
    if isinstance(err, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(err, RuntimeError) and any(text in str(err).lower() for text in _OOM_TEXT)


def out_of_memory_message(step: int, batch_size: int, grad_accum: int, err: BaseException) -> str:
    return (
        f"ran out of memory at step {step} with train.batch_size={batch_size} per rank ({err.__class__.__name__}: "
        f"{str(err).splitlines()[0] if str(err) else ''}). Try a smaller train.batch_size with a larger "
        f"train.grad_accum to keep the effective batch (e.g. batch_size={max(1, batch_size // 2)} "
        f"grad_accum={grad_accum * 2}), train.grad_checkpointing=true, or precision=bf16. "
        "Resume from the last checkpoint with --resume."
    )


def _say(text: str) -> None:
    """Write to file descriptor 2 directly: a signal handler that prints while the interrupted code is
    printing gets "reentrant call" from the buffered stream."""
    try:
        os.write(2, text.encode())
    except OSError:
        pass


class StopSignals:
    """Turns the first SIGINT / SIGTERM into a request to checkpoint and stop.

    The loop polls :attr:`requested` at each optimizer step (the engine agrees on
    it across ranks). A second SIGINT (a person pressing Ctrl-C twice) gives the
    default behaviour back, so a run stuck in I/O can still be stopped at once.
    A repeated SIGTERM is ignored: cluster schedulers (Slurm, Kubernetes) send
    SIGTERM to every process of a job and torchrun forwards its own copy, all
    within the grace period before SIGKILL, and none of them means "skip the
    checkpoint". Only the main thread may install handlers; elsewhere this is a no-op.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested: int | None = None
        self.sigints = 0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT:
            self.sigints += 1
        if self.requested is not None:
            if signum == signal.SIGINT and self.sigints >= 2:
                self.restore()
                raise KeyboardInterrupt
            name = signal.Signals(signum).name
            _say(f"\n{name} again: still checkpointing after this step (Ctrl-C twice stops at once)\n")
            return
        self.requested = signum
        name = signal.Signals(signum).name
        again = "Ctrl-C again" if signum == signal.SIGINT else "Ctrl-C twice"
        _say(f"\n{name}: checkpointing after this step, then stopping ({again} to stop at once)\n")

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def __exit__(self, *exc: object) -> None:
        self.restore()
