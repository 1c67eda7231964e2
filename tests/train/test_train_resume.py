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


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 90.0) -> None:
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
    proc = _start(run, "--delay", "0.08", "--checkpoint-every", "4")
    try:
        # past the step-8 checkpoint by a few steps, so that logged work is lost with the kill
        _wait_for(lambda: (run / "checkpoints" / "step_00000008").is_dir() and _logged(run) >= 10, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    logged_before = _logged(run)
    assert logged_before < STEPS

    result, _ = run_toy(run, steps=STEPS, dropout=0.1, resume=True, train={"checkpoint_every": 4})
    assert 8 <= result.start_step < logged_before + 1  # restarted from the newest complete checkpoint
    resumed = [r["loss"] for r in read_metrics(run / "metrics.jsonl")]
    expected = _uninterrupted(tmp_path / "straight", checkpoint_every=4)
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == list(range(1, STEPS + 1))
    assert resumed == pytest.approx(expected, rel=0, abs=1e-6)  # dropout included: RNG states restored


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_before_exiting(tmp_path):
    run = tmp_path / "stopped"
    proc = _start(run, "--delay", "0.08", "--checkpoint-every", "0")  # 0: no periodic checkpoints
    try:
        _wait_for(lambda: _logged(run) >= 3, proc)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err[-2000:]
    stopped_at = _logged(run)
    assert 3 <= stopped_at < STEPS
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert checkpoints == [f"step_{stopped_at:08d}"]  # written on the way out, at the last finished step
    assert '"stopped_by": "SIGTERM"' in out

    run_toy(run, steps=STEPS, dropout=0.1, resume=True, train={"checkpoint_every": 0})
    resumed = [r["loss"] for r in read_metrics(run / "metrics.jsonl")]
    assert resumed == pytest.approx(_uninterrupted(tmp_path / "straight", checkpoint_every=0), rel=0, abs=1e-6)


@pytest.mark.slow
def test_sigterm_twice_as_schedulers_send_it_still_writes_the_checkpoint(tmp_path):
    """Slurm and Kubernetes send SIGTERM to every process of a job, torchrun forwards its own copy, and
    SIGKILL follows after a grace period: the second SIGTERM arrives while the first one's checkpoint is
    pending and must not cancel it (only Ctrl-C twice stops at once)."""
    run = tmp_path / "stopped"
    # long steps, so that the second signal surely lands before the step and its checkpoint are done
    proc = _start(run, "--delay", "0.5", "--checkpoint-every", "0")
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    seen = []
    try:
        _wait_for(lambda: _logged(run) >= 2, proc)
        proc.send_signal(signal.SIGTERM)
        while not any("SIGTERM: checkpointing after this step" in line for line in seen):  # the first is handled
            seen.append(lines.get(timeout=60))
        proc.send_signal(signal.SIGTERM)
        out = proc.stdout.read()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(0.1)  # the reader thread drains the pipe after the process ended
    while not lines.empty():
        seen.append(lines.get())
    err = "".join(seen)
    assert proc.returncode == 143, err[-2000:]
    assert "SIGTERM again: still checkpointing after this step" in err
    stopped_at = _logged(run)
    assert 2 <= stopped_at < STEPS
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [f"step_{stopped_at:08d}"]
    assert '"stopped_by": "SIGTERM"' in out

    result, _ = run_toy(run, steps=STEPS, dropout=0.1, resume=True, train={"checkpoint_every": 0})
    assert result.start_step == stopped_at
    resumed = [r["loss"] for r in read_metrics(run / "metrics.jsonl")]
    assert resumed == pytest.approx(_uninterrupted(tmp_path / "straight", checkpoint_every=0), rel=0, abs=1e-6)
