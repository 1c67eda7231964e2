"""ALBEF's queue over 2 gloo ranks: both ranks enqueue the same gathered batch, and the loss equals one process's."""

from pathlib import Path

import dist_itc_queue_worker as worker
import pytest
import torch
from two_ranks import run_two_ranks


@pytest.mark.slow
def test_both_ranks_hold_the_queue_of_the_global_batch(tmp_path: Path) -> None:
    run_two_ranks(worker, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for name in worker.CASES:
        losses, queue = worker.run_case(name)  # one process, the whole global batch
        assert int(queue["count"]) == worker.STEPS * sum(worker.SIZES)
        for r, got in enumerate(ranks):
            for key, value in queue.items():  # bit-equal: the same gathered features in the same slots
                assert torch.equal(got[name]["queue"][key], value), f"{name}: rank {r} queue {key}"
        if name != "per_rank":  # per-rank losses see only their own batch columns
            torch.testing.assert_close(torch.stack(ranks[0][name]["losses"]), torch.stack(losses), rtol=1e-5, atol=1e-6)
