"""ITC across ranks vs one process: run under torchrun (2 ranks, gloo) by test_objectives_itc_dist.py.

Every rank builds the same global data and projections, keeps its slice of
the batch, computes the ITC loss, backpropagates and averages the gradients
over ranks as DDP does. Rank 0 writes loss and gradients per case to the file
given as argv[1]; the test compares them with :func:`run_case` in one process
on the whole batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from two_ranks import save_rank_averages

from vlp.core.outputs import ModelOutputs
from vlp.data.batch import Batch
from vlp.objectives.itc import ITC, ITCConfig

# name -> (per-rank batch sizes, ITC options, use image_index, momentum distillation)
CASES = {
    "full": ([4, 4], {}, False, False),
    "local": ([4, 4], {"local_loss": True}, False, False),
    "full_smooth_ids": ([4, 4], {"label_smoothing": 0.1}, True, False),
    "local_smooth_ids": ([4, 4], {"local_loss": True, "label_smoothing": 0.1}, True, False),
    "full_uneven": ([3, 5], {}, False, False),
    "local_uneven_ids": ([3, 5], {"local_loss": True}, True, False),
    "local_distill": ([4, 4], {"local_loss": True, "distill_alpha": 0.4}, False, True),
}


class Towers(nn.Module):
    """Two linear towers and a learnable logit scale: enough parameters to compare gradients."""

    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Linear(6, 5)
        self.text = nn.Linear(7, 5)
        self.logit_scale = nn.Parameter(torch.tensor(2.3))


def case_data(total: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(total)
    return {
        "image": torch.randn(total, 6, generator=g),
        "text": torch.randn(total, 7, generator=g),
        "ids": torch.arange(total) // 2,  # captions 2k and 2k+1 share an image; pairs straddle ranks when sizes are odd
        "m_image": torch.randn(total, 5, generator=g),
        "m_text": torch.randn(total, 5, generator=g),
    }


def run_case(name: str, rows: slice | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss and parameter gradients of case ``name`` on ``rows`` of the global batch (all rows if None)."""
    sizes, options, use_ids, distill = CASES[name]
    data = case_data(sum(sizes))
    rows = rows or slice(0, sum(sizes))
    torch.manual_seed(0)
    towers = Towers()
    outputs = ModelOutputs(
        model=None,
        image_embed=F.normalize(towers.image(data["image"][rows]), dim=-1),
        text_embed=F.normalize(towers.text(data["text"][rows]), dim=-1),
        logit_scale=towers.logit_scale,
    )
    if distill:
        outputs.momentum = ModelOutputs(
            model=None,
            image_embed=F.normalize(data["m_image"][rows], dim=-1),
            text_embed=F.normalize(data["m_text"][rows], dim=-1),
        )
    batch = Batch(image_index=data["ids"][rows] if use_ids else None)
    loss, _ = ITC(ITCConfig(**options))(outputs, batch)
    loss.backward()
    return loss.detach(), {n: p.grad.detach().clone() for n, p in towers.named_parameters()}


if __name__ == "__main__":
    save_rank_averages(CASES, run_case)
