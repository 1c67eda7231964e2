"""Run a worker script on 2 gloo ranks (torchrun, one thread each) and compare what it saved with one process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
import torch.distributed as dist


def run_two_ranks(worker: ModuleType, out: Path) -> None:
    """``torchrun --nproc_per_node 2 WORKER OUT``; fails the test with the workers' output tails on an error."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run([*cmd, str(Path(worker.__file__)), str(out)], env=env, capture_output=True, text=True,
                          timeout=180)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def save_rank_averages(
    cases: dict[str, tuple], run_case: Callable[[str, slice], tuple[torch.Tensor, dict[str, torch.Tensor]]]
) -> None:
    """A worker's ``main`` under torchrun: for each case (its first field: the per-rank batch sizes) run
    ``run_case`` on this rank's rows, average loss and gradients over ranks as DDP does (and a logger does
    to the loss); rank 0 saves ``{case: {"loss": ..., **grads}}`` to ``argv[1]``."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    results = {}
    for name, (sizes, *_) in cases.items():
        start = sum(sizes[:rank])
        loss, grads = run_case(name, slice(start, start + sizes[rank]))
        for grad in [loss, *grads.values()]:
            dist.all_reduce(grad)
            grad /= world
        results[name] = {"loss": loss, **grads}
    if rank == 0:
        torch.save(results, sys.argv[1])
    dist.barrier()
    dist.destroy_process_group()


def check_loss_and_gradients(worker: ModuleType, tmp_path: Path) -> None:
    """The loss and the DDP-averaged gradients of 2 ranks (saved by ``worker`` per case) equal one process's
    over the whole batch (``worker.run_case(name) -> (loss, grads)``)."""
    out = tmp_path / "dist.pt"
    run_two_ranks(worker, out)
    results = torch.load(out, weights_only=True)
    assert set(results) == set(worker.CASES)
    for name in worker.CASES:
        loss, grads = worker.run_case(name)
        got = results[name]
        torch.testing.assert_close(got["loss"], loss, rtol=1e-5, atol=1e-6, msg=f"{name}: loss")
        for key, grad in grads.items():
            assert grad.abs().sum() > 0, f"{name}: {key} has no gradient"
            torch.testing.assert_close(got[key], grad, rtol=1e-4, atol=1e-6, msg=f"{name}: gradient of {key}")
