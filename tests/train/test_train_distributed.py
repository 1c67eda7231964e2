"""torchrun with 2 CPU processes (gloo) equals 1 process with the doubled batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from toy_train import run_toy

from vlp.train.logging import read_metrics

WORKER = Path(__file__).with_name("worker_train.py")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_two_ranks_equal_one_rank_with_the_doubled_batch(tmp_path, kind):
    two = tmp_path / "two"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(WORKER), str(two), "--batch-size", "4", "--distributed", kind, "--schedule", "constant",
        "--ema", "0.5", "--steps", "3", "--resume-to", "6",  # a save/load round trip at step 3
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]

    run_toy(tmp_path / "one", steps=6, batch_size=8, schedule={"name": "constant"}, train={"ema_decay": 0.5})
    a = read_metrics(two / "metrics.jsonl")
    b = read_metrics(tmp_path / "one" / "metrics.jsonl")
    assert [r["step"] for r in a] == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "grad_norm", "acc"):
        assert [r[key] for r in a] == pytest.approx([r[key] for r in b], rel=1e-5, abs=1e-6), key
    assert a[-1]["samples_per_s"] > 0
    # rank 0 alone writes: one metrics file, one set of checkpoints
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["step_00000003", "step_00000006"]
