"""A training process killed with SIGKILL (or stopped with SIGTERM) resumes exactly."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from toy_train import run_toy

from vlp.train.logging import read_metrics

WORKER = Path(__file__).with_name("worker_train.py")
STEPS = 24


def _start(run_dir: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(WORKER), str(run_dir), "--steps", str(STEPS), "--dropout", "0.1", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _logged(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return len(read_metrics(path)) if path.exists() else 0


class _Stderr:
    """The worker's stderr, read by a thread, so a test can wait for a line while the worker runs."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc, self.lines, self.seen = proc, queue.Queue(), []
        self.thread = threading.Thread(target=lambda: [self.lines.put(x) for x in proc.stderr], daemon=True)
        self.thread.start()

    def wait_for(self, text: str, timeout: float = 120.0) -> None:
        """Until a line holds ``text``; the timeout only guards against a hung worker."""
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.seen):
            try:
                self.seen.append(self.lines.get(timeout=0.1))
            except queue.Empty:
                ended = self.proc.poll() is not None and not self.thread.is_alive()
                if ended or time.monotonic() > deadline:
                    self.proc.kill()
                    rc = self.proc.wait()
                    pytest.fail(f"worker (rc {rc}) printed no {text!r}: {''.join(self.seen)[-2000:]}")

    def text(self) -> str:
        self.thread.join(timeout=60)  # the pipe closes when the worker has ended
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return "".join(self.seen)


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Until ``condition()``; the timeout only guards against a hung worker (the workers hold at a known step)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"worker ended early (rc {proc.returncode}): {proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("worker made no progress in time")
        time.sleep(0.02)


def _uninterrupted(run_dir: Path, **train) -> list[float]:
    run_toy(run_dir, steps=STEPS, dropout=0.1, train=train)
    return [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl")]


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_gives_the_same_losses(tmp_path):
    run = tmp_path / "killed"
    # the 11th forward holds (no release file): killed 3 steps past the step-8 checkpoint, so logged work is lost
    proc = _start(run, "--checkpoint-every", "4", "--hold-at", "11", "--release", str(tmp_path / "never"))
    try:
        _wait_for(lambda: (run / "checkpoints" / "step_00000008").is_dir() and _logged(run) >= 10, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert _logged(run) == 10

    result, _ = run_toy(run, steps=STEPS, dropout=0.1, resume=True, train={"checkpoint_every": 4})
    assert result.start_step == 8  # restarted from the newest complete checkpoint
    resumed = [r["loss"] for r in read_metrics(run / "metrics.jsonl")]
    expected = _uninterrupted(tmp_path / "straight", checkpoint_every=4)
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == list(range(1, STEPS + 1))
    assert resumed == pytest.approx(expected, rel=0, abs=1e-6)  # dropout included: RNG states restored


def _stop_with_sigterm(tmp_path: Path, run: Path, times: int) -> tuple[subprocess.Popen, str, str]:
    """Start the worker, hold it inside step 4, send SIGTERM ``times`` times (each once the one before was
    handled), release it; returns (process, stdout, stderr)."""
    release = tmp_path / "release"
    proc = _start(run, "--checkpoint-every", "0", "--hold-at", "4", "--release", str(release))  # 0: end only
    stderr = _Stderr(proc)
    try:
        _wait_for(lambda: _logged(run) >= 3, proc)
        proc.send_signal(signal.SIGTERM)
        stderr.wait_for("SIGTERM: checkpointing after this step")
        for _ in range(times - 1):  # as Slurm / Kubernetes and then torchrun send it, within the grace period
            proc.send_signal(signal.SIGTERM)
            stderr.wait_for("SIGTERM again: still checkpointing after this step")
        release.touch()
        out = proc.stdout.read()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc, out, stderr.text()


@pytest.mark.slow
@pytest.mark.parametrize("times", [1, 2])
def test_sigterm_writes_a_checkpoint_before_exiting(tmp_path, times):
    """A repeated SIGTERM (Slurm and Kubernetes signal every process of a job and torchrun forwards its own copy,
    SIGKILL follows after a grace period) must not cancel the stop checkpoint: only Ctrl-C twice stops at once."""
    run = tmp_path / "stopped"
    proc, out, err = _stop_with_sigterm(tmp_path, run, times)
    assert proc.returncode == 143, err[-2000:]
    assert _logged(run) == 4  # step 4, inside which the signals came, finished
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert checkpoints == ["step_00000004"]  # written on the way out, at the last finished step
    assert '"stopped_by": "SIGTERM"' in out

    result, _ = run_toy(run, steps=STEPS, dropout=0.1, resume=True, train={"checkpoint_every": 0})
    assert result.start_step == 4
    resumed = [r["loss"] for r in read_metrics(run / "metrics.jsonl")]
    assert resumed == pytest.approx(_uninterrupted(tmp_path / "straight", checkpoint_every=0), rel=0, abs=1e-6)
