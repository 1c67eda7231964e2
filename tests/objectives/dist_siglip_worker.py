"""SigLIP across ranks vs one process: run under torchrun (2 ranks, gloo) by test_objectives_siglip_dist.py.

Every rank builds the same global data and towers, keeps its slice of the batch, computes the
sigmoid loss (its images against its own and the other rank's texts), backpropagates and averages
the gradients over ranks as DDP does. Rank 0 writes loss and gradients per case to argv[1]; the
test compares them with :func:`run_case` in one process on the whole batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from two_ranks import save_rank_averages

from vlp.core.outputs import ModelOutputs
from vlp.data.batch import Batch
from vlp.objectives.siglip import SigLIP, SigLIPConfig

# name -> (per-rank batch sizes, use image_index)
CASES = {"even": ([4, 4], False), "uneven": ([3, 5], False), "uneven_ids": ([5, 3], True)}


class Towers(nn.Module):
    """Two linear towers, a learnable logit scale and bias: enough parameters to compare gradients."""

    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Linear(6, 5)
        self.text = nn.Linear(7, 5)
        self.logit_scale = nn.Parameter(torch.tensor(1.5))
        self.logit_bias = nn.Parameter(torch.tensor(-2.0))


def run_case(name: str, rows: slice | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss and parameter gradients of case ``name`` on ``rows`` of the global batch (all rows if None)."""
    sizes, use_ids = CASES[name]
    total = sum(sizes)
    g = torch.Generator().manual_seed(total)
    image, text = torch.randn(total, 6, generator=g), torch.randn(total, 7, generator=g)
    ids = torch.arange(total) // 2  # captions 2k and 2k+1 share an image; pairs straddle ranks when sizes are odd
    rows = rows or slice(0, total)
    torch.manual_seed(0)
    towers = Towers()
    outputs = ModelOutputs(
        model=None,
        image_embed=F.normalize(towers.image(image[rows]), dim=-1),
        text_embed=F.normalize(towers.text(text[rows]), dim=-1),
        logit_scale=towers.logit_scale,
        logit_bias=towers.logit_bias,
    )
    loss, _ = SigLIP(SigLIPConfig())(outputs, Batch(image_index=ids[rows] if use_ids else None))
    loss.backward()
    return loss.detach(), {n: p.grad.detach().clone() for n, p in towers.named_parameters()}


if __name__ == "__main__":
    save_rank_averages(CASES, run_case)
