"""SigLIP's pairwise sigmoid loss (Zhai et al., 2023): every image-text pair is a binary problem.

``logit_ij = t * <x_i, y_j> + b`` on the model's L2-normalized embeddings, ``t = exp(logit_scale)``
(the model's learnable log-scale, started at ``log 10`` by the ``siglip`` recipes' temperature 0.1)
and ``b`` the model's learnable ``logit_bias`` (``model.logit_bias: true``, started at -10). With
``z_ij = +1`` for matching pairs and -1 otherwise the loss is

    ``-1/|B| sum_ij log sigmoid(z_ij * logit_ij)``

(sum over the rows and columns, divided by the number of images). Matching pairs are the diagonal,
or with ``batch.image_index`` every caption of the same image.

Across ranks (``gather: true``) each rank scores its own images against the texts of every rank:
its own chunk and the other ranks' chunks, exchanged with gradient
(:func:`vlp.objectives.distributed.gather_with_grad`; an all-gather, which here moves the same
``N x E`` numbers as the paper's ring of chunk swaps). A rank's loss is scaled by
``world / N`` instead of ``1 / B_r``, so that the DDP average over ranks is the one-process loss
over the whole global batch and so are the gradients (tested with 2 gloo processes). Unlike
softmax ITC no row needs the whole batch's normalizer, so the image side is never gathered.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vlp.config import ConfigError, part
from vlp.objectives.base import Logs, Objective, ObjectiveConfig, ObjectiveOptions, require
from vlp.objectives.distributed import dist_info, gather_sizes, gather_with_grad
from vlp.objectives.itc import MAX_LOGIT_SCALE, capped_scale


@dataclass(eq=False)
class SigLIPConfig(ObjectiveOptions):
    gather: bool = True  # score against every rank's texts (False: a per-rank loss)
    max_logit_scale: float = MAX_LOGIT_SCALE  # cap on exp(logit_scale), as for itc
    use_image_index: bool = True  # positives = same batch.image_index when the batch has it

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_logit_scale <= 0:
            raise ValueError(f"max_logit_scale must be > 0, got {self.max_logit_scale}")


def pair_signs(
    row_ids: torch.Tensor | None, col_ids: torch.Tensor | None, rows: int, cols: int, offset: int, device: torch.device
) -> torch.Tensor:
    """``z`` of ``rows`` images against ``cols`` texts: +1 on matching pairs, -1 elsewhere.

    Matching = the diagonal shifted by ``offset`` (this rank's first row in the global batch), or
    equal image ids when both are given."""
    if row_ids is None or col_ids is None:
        positive = torch.arange(rows, device=device)[:, None] + offset == torch.arange(cols, device=device)[None, :]
    else:
        positive = row_ids[:, None] == col_ids[None, :]
    return positive.float() * 2 - 1


class SigLIP(Objective):
    """Sigmoid loss on ``outputs.image_embed`` / ``outputs.text_embed`` with ``logit_scale`` and ``logit_bias``."""

    name = "siglip"

    def __init__(self, cfg: SigLIPConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def compute(self, outputs, batch) -> tuple[torch.Tensor, Logs]:
        cfg = self.cfg
        hint = "the model needs a dual-encoder side (model.embed_dim > 0)"
        image = require(outputs.image_embed, "outputs.image_embed", "siglip", hint)
        text = require(outputs.text_embed, "outputs.text_embed", "siglip", hint)
        if image.shape != text.shape:
            shapes = f"image_embed {tuple(image.shape)} and text_embed {tuple(text.shape)}"
            raise ConfigError(f"objectives.siglip: {shapes} differ")
        log_scale = require(outputs.logit_scale, "outputs.logit_scale", "siglip", hint)
        bias = require(outputs.logit_bias, "outputs.logit_bias", "siglip", "set model.logit_bias: true")
        scale = capped_scale(log_scale, cfg.max_logit_scale).to(image.device)
        ids = batch.image_index if cfg.use_image_index else None

        rank, world = dist_info() if cfg.gather else (0, 1)
        local = image.shape[0]
        if world > 1:
            sizes = gather_sizes(local, image.device)
            all_text = gather_with_grad(text, sizes)
            all_ids = None if ids is None else gather_with_grad(ids, sizes)
            offset, total = sum(sizes[:rank]), sum(sizes)
        else:
            all_text, all_ids, offset, total = text, ids, 0, local

        logits = scale * image @ all_text.t() + bias.to(image.device)  # (B_r, N): this rank's images, all texts
        signs = pair_signs(ids, all_ids, local, total, offset, image.device)
        # -log sigmoid(z * logit), summed; world / N makes the DDP average the mean over all N images
        loss = -F.logsigmoid(signs * logits.float()).sum() * (world / total)
        with torch.no_grad():
            hit = signs.gather(1, logits.argmax(1, keepdim=True)).squeeze(1) > 0
        logs = {"siglip_acc": hit.float().mean(), "logit_scale": scale.detach(), "logit_bias": bias.detach()}
        return loss, logs


part(ObjectiveConfig, "siglip", SigLIP)(SigLIPConfig)

__all__ = ["SigLIP", "SigLIPConfig", "pair_signs"]
