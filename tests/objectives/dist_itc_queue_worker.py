"""ITC with ALBEF's queue across ranks: run under torchrun (2 ranks, gloo) by test_objectives_itc_queue_dist.py.

Every rank builds the same global data, keeps its slice of each step's batch and runs three ITC steps with a
queue of 7 (the global batches of 5 wrap it). Each rank writes its losses (averaged over ranks as a logger
does) and its queue buffers to ``argv[1]/rank<r>.pt``; the test compares the ranks with each other and with
:func:`run_case` in one process on the whole batch.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from vlp.core.outputs import ModelOutputs
from vlp.data.batch import Batch
from vlp.objectives.itc import ITC, ITCConfig

SIZES = [3, 2]  # uneven: the last, short batch of an epoch
STEPS = 3
QUEUE = 7
# name -> ITC options (all with the queue and momentum distillation)
CASES = {
    "full": {},
    "local": {"local_loss": True},
    "per_rank": {"gather": False},  # the loss is per rank, the queue still takes the global batch
}


def step_data(step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    total = sum(SIZES)
    return {
        **{k: F.normalize(torch.randn(total, 4, generator=g), dim=-1) for k in ("image", "text", "m_image", "m_text")},
        "ids": torch.randint(0, 4, (total,), generator=g),  # repeated ids: positives in the batch and the queue
    }


def run_case(name: str, rows: slice | None = None) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """Losses of the steps of case ``name`` on ``rows`` of each global batch, and the queue buffers after."""
    itc = ITC(ITCConfig(queue_size=QUEUE, distill_alpha=0.4, **CASES[name]))
    losses = []
    for step in range(STEPS):
        data = step_data(step)
        part = {k: v[rows or slice(None)] for k, v in data.items()}
        outputs = ModelOutputs(
            model=None, image_embed=part["image"], text_embed=part["text"], logit_scale=torch.tensor(2.0)
        )
        outputs.momentum = ModelOutputs(model=None, image_embed=part["m_image"], text_embed=part["m_text"])
        loss, _ = itc(outputs, Batch(image_index=part["ids"]))
        losses.append(loss.detach())
    return losses, {k: v.clone() for k, v in itc.queue.state_dict().items()}


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    start = sum(SIZES[:rank])
    results = {}
    for name in CASES:
        losses, queue = run_case(name, slice(start, start + SIZES[rank]))
        for loss in losses:
            dist.all_reduce(loss)
            loss /= world
        results[name] = {"losses": losses, "queue": queue}
    torch.save(results, Path(sys.argv[1]) / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
