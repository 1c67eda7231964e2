"""What the user sees: a tqdm progress bar, ``metrics.jsonl``, TensorBoard events.

Only rank 0 writes; other ranks get disabled objects so call sites need no
``if rank == 0``.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from vlp.io.atomic import write_atomic

METRICS_FILE = "metrics.jsonl"


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Records of a ``metrics.jsonl`` (a torn last line from a crash is ignored)."""
    records = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


class MetricsLog:
    """Appends one JSON line per logged step to ``RUN_DIR/metrics.jsonl`` (and TensorBoard).

    ``resume_step``: records after this step came from the part of a run that a
    crash threw away; they are dropped so the file reads as one continuous run.
    """

    def __init__(self, run_dir: str | Path, *, enabled: bool = True, resume_step: int = 0, tensorboard: bool = True):
        self.enabled = enabled
        self.path = Path(run_dir) / METRICS_FILE
        self._handle = None
        self._tb = None
        if not enabled:
            return
        if resume_step > 0 and self.path.exists():
            kept = [r for r in read_metrics(self.path) if int(r.get("step", 0)) <= resume_step]
            write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        elif resume_step == 0 and self.path.exists():
            self.path.unlink()
        self._handle = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                SummaryWriter = None
            if SummaryWriter is not None:
                self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"), purge_step=resume_step + 1)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled or self._handle is None:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self._handle.write(json.dumps(clean) + "\n")
        self._handle.flush()  # a crash must not lose what was logged
        if self._tb is not None:
            step = int(record["step"])
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(f"train/{key}", value, step)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


class Progress:
    """Progress bar: step, loss, lr, samples/s; tqdm supplies the ETA."""

    def __init__(self, total: int, initial: int, *, is_main: bool = True, show_bar: bool = True) -> None:
        self.is_main = is_main
        self.rate: float | None = None
        self.bar = tqdm(
            total=total, initial=initial, disable=not (is_main and show_bar), unit="step", dynamic_ncols=True
        )

    def update(
        self,
        steps: int,
        loss: float | None = None,
        lr: float | None = None,
        rate: float | None = None,
        budget: float | None = None,
    ) -> None:
        """``budget``: the fraction of a time budget spent (the bar's total is train.steps, which the budget
        may cut short)."""
        self.rate = rate if rate is not None else self.rate  # shown until the next measurement
        if loss is not None:
            parts = {"loss": f"{loss:.4g}"}
            if lr is not None:
                parts["lr"] = f"{lr:.3g}"
            if self.rate is not None:
                parts["samples/s"] = f"{self.rate:.1f}"
            if budget is not None:
                parts["time budget"] = f"{budget:.0%}"
            self.bar.set_postfix(parts, refresh=False)
        self.bar.update(steps)

    def write(self, message: str) -> None:
        """Print a line (rank 0) without breaking the bar."""
        if self.is_main:
            tqdm.write(message, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()


def summary_text(summary: dict[str, Any]) -> str:
    """The end-of-run block printed on rank 0."""
    lines = [
        f"run          {summary['run_dir']}",
        f"steps        {summary['start_step']} -> {summary['step']} of {summary['total_steps']}"
        + (f" (stopped by {summary['stopped_by']})" if summary.get("stopped_by") else ""),
        f"final loss   {summary['loss']:.6g}" if summary.get("loss") is not None else "final loss   -",
        f"time         {summary['seconds']:.1f} s, {summary['samples_per_s']:.1f} samples/s",
        f"skipped      {summary['skipped_steps']} non-finite step(s)",
        f"checkpoint   {summary.get('checkpoint') or '-'}",
    ]
    return "\n".join(lines)
