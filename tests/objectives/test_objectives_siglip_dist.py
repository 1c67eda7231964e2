"""SigLIP over 2 gloo ranks x B equals 1 process x 2B: loss and DDP-averaged gradients."""

import os
import subprocess
import sys
from pathlib import Path

import dist_siglip_worker as worker
import pytest
import torch


@pytest.mark.slow
def test_siglip_two_ranks_match_one_process(tmp_path: Path) -> None:
    out = tmp_path / "dist.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [*cmd, str(Path(worker.__file__)), str(out)], env=env, capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = torch.load(out, weights_only=True)
    assert set(results) == set(worker.CASES)
    for name in worker.CASES:
        loss, grads = worker.run_case(name)
        got = results[name]
        torch.testing.assert_close(got["loss"], loss, rtol=1e-5, atol=1e-6, msg=f"{name}: loss")
        for key, grad in grads.items():
            assert grad.abs().sum() > 0, f"{name}: {key} has no gradient"
            torch.testing.assert_close(got[key], grad, rtol=1e-4, atol=1e-6, msg=f"{name}: gradient of {key}")
