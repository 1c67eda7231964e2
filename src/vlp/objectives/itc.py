"""Image-text contrastive loss (CLIP, ALIGN, ALBEF): symmetric InfoNCE.

Logits are ``exp(logit_scale) * image_embed @ text_embed.T`` on the model's
L2-normalized embeddings; ``logit_scale`` is the log of the inverse temperature
(CLIP's parameter, initialised to log(1/0.07)) and is clamped to ``log(100)``
as in CLIP, so the gradient to it vanishes once it reaches that ceiling.

Across ranks the features of the whole global batch are gathered with gradient
(:mod:`vlp.objectives.distributed`); ``local_loss`` keeps only this rank's rows
of the global logits, ``(B, N)`` instead of ``(N, N)``, and rescales so that the
DDP-averaged gradient equals that of one process holding the whole batch.

Several captions of one image in a batch: with ``batch.image_index`` every pair
of the same image is a positive and the target is spread uniformly over them.
``image_index`` must be comparable across ranks (e.g. dataset image ids).
With momentum distillation (ALBEF) the target is
``alpha * softmax(momentum logits) + (1 - alpha) * hard target``, with ``alpha``
ramped up from 0 over the first ``distill_warmup_steps`` steps as in ALBEF
(:func:`vlp.objectives.momentum.distill_weight`); ALBEF's queue of past momentum
features is not implemented (only the current global batch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vlp.config import ConfigError, part
from vlp.objectives.base import Logs, Objective, ObjectiveConfig, ObjectiveOptions, require
from vlp.objectives.distributed import dist_info, gather_sizes, gather_with_grad
from vlp.objectives.momentum import STEP_KEY, distill_weight


def contrastive_targets(
    row_ids: torch.Tensor | None, col_ids: torch.Tensor | None, num_rows: int, offset: int, device: torch.device
) -> torch.Tensor:
    """Targets of ``R`` rows against ``N`` columns: class indices ``(R,)`` = the diagonal shifted by
    ``offset`` (one pair per image), or with image ids a distribution ``(R, N)`` uniform over the
    columns of the row's image."""
    if row_ids is None or col_ids is None:
        return torch.arange(num_rows, device=device) + offset
    positive = (row_ids[:, None] == col_ids[None, :]).float()
    return positive / positive.sum(1, keepdim=True)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """Mean over rows of ``-sum_j q_j log softmax(logits)_j``, ``q`` smoothed towards uniform.

    ``target`` is a class index per row (``(R,)`` long: the memory-lean path, no
    ``(R, N)`` target matrix) or a distribution per row (``(R, N)``).
    """
    if target.dtype == torch.long:
        return F.cross_entropy(logits.float(), target, label_smoothing=smoothing)
    if smoothing > 0:
        target = (1.0 - smoothing) * target + smoothing / logits.shape[-1]
    return -(target * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


MAX_LOGIT_SCALE = 100.0  # CLIP's cap on exp(logit_scale)


def capped_scale(logit_scale: torch.Tensor, cap: float = MAX_LOGIT_SCALE) -> torch.Tensor:
    """``exp(min(logit_scale, log cap))``: the inverse temperature a learnable logit scale stands for."""
    return logit_scale.clamp(max=math.log(cap)).exp()


@dataclass(eq=False)
class ITCConfig(ObjectiveOptions):
    label_smoothing: float = 0.0
    local_loss: bool = False  # rows of this rank only: (B, N) logits instead of (N, N)
    gather: bool = True  # gather features across ranks (False: a per-rank contrastive loss)
    max_logit_scale: float = MAX_LOGIT_SCALE
    temperature: float | None = None  # a fixed temperature instead of the model's learnable logit_scale
    distill_alpha: float = 0.4  # ALBEF: weight of the momentum model's soft targets (used when momentum is on)
    distill_warmup_steps: int = 0  # ALBEF: alpha ramps linearly from 0 over this many optimizer steps (0: off)
    use_image_index: bool = True  # positives = same batch.image_index when the batch has it

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0.0 <= self.distill_alpha <= 1.0:
            raise ValueError(f"distill_alpha must be in [0, 1], got {self.distill_alpha}")
        if self.distill_warmup_steps < 0:
            raise ValueError(f"distill_warmup_steps must be >= 0, got {self.distill_warmup_steps}")
        if self.temperature is not None and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.max_logit_scale <= 0:
            raise ValueError(f"max_logit_scale must be > 0, got {self.max_logit_scale}")


class ITC(Objective):
    """Symmetric InfoNCE on ``outputs.image_embed`` / ``outputs.text_embed`` (both ``(B, E)``, L2-normalized)."""

    name = "itc"

    def __init__(self, cfg: ITCConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def scale(self, logit_scale: torch.Tensor | None) -> torch.Tensor:
        """``exp(min(logit_scale, log max))``, or ``1/temperature`` when a fixed one is configured."""
        if self.cfg.temperature is not None:
            return torch.tensor(1.0 / self.cfg.temperature)
        logit_scale = require(logit_scale, "outputs.logit_scale", "itc", "set objectives.itc.temperature instead")
        return capped_scale(logit_scale, self.cfg.max_logit_scale)

    def compute(self, outputs, batch) -> tuple[torch.Tensor, Logs]:
        cfg = self.cfg
        hint = "the model needs a dual-encoder side (model.embed_dim > 0)"
        image = require(outputs.image_embed, "outputs.image_embed", "itc", hint)
        text = require(outputs.text_embed, "outputs.text_embed", "itc", hint)
        if image.shape != text.shape:
            shapes = f"image_embed {tuple(image.shape)} and text_embed {tuple(text.shape)}"
            raise ConfigError(f"objectives.itc: {shapes} differ")
        scale = self.scale(outputs.logit_scale).to(image.device)
        ids = batch.image_index if cfg.use_image_index else None

        rank, world = dist_info() if cfg.gather else (0, 1)
        local = image.shape[0]
        if world > 1:
            sizes = gather_sizes(local, image.device)
            all_image, all_text = gather_with_grad(image, sizes), gather_with_grad(text, sizes)
            all_ids = None if ids is None else gather_with_grad(ids, sizes)
            offset, total = sum(sizes[:rank]), sum(sizes)
        else:
            sizes, all_image, all_text, all_ids, offset, total = [local], image, text, ids, 0, local

        if cfg.local_loss:
            rows_image, rows_text, row_ids, row_offset = image, text, ids, offset
        else:
            rows_image, rows_text, row_ids, row_offset = all_image, all_text, all_ids, 0
        logits_i2t = scale * rows_image @ all_text.t()  # (R, N)
        logits_t2i = scale * rows_text @ all_image.t()  # (R, N)
        target = contrastive_targets(row_ids, all_ids, rows_image.shape[0], row_offset, image.device)
        target_i2t = target_t2i = target

        logs = {}
        momentum = outputs.momentum
        if momentum is not None and cfg.distill_alpha > 0:
            alpha = distill_weight(cfg.distill_alpha, cfg.distill_warmup_steps, outputs.extra.get(STEP_KEY), "itc")
            target_i2t, target_t2i = self._distill_targets(momentum, target, sizes, rank, world, scale, alpha)
            logs["itc_alpha"] = torch.as_tensor(alpha)

        loss_i2t = soft_cross_entropy(logits_i2t, target_i2t, cfg.label_smoothing)
        loss_t2i = soft_cross_entropy(logits_t2i, target_t2i, cfg.label_smoothing)
        loss = (loss_i2t + loss_t2i) / 2
        if cfg.local_loss and world > 1:
            # this rank's mean covers B_r of the N rows and DDP averages over ranks:
            # weight it so that the average over ranks is the mean over all N rows
            loss = loss * (local * world / total)
        with torch.no_grad():
            best = logits_i2t.argmax(1)
            hit = best == target if target.dtype == torch.long else target.gather(1, best[:, None]).squeeze(1) > 0
        return loss, {"itc_acc": hit.float().mean(), "logit_scale": scale.detach(), **logs}

    @torch.no_grad()
    def _distill_targets(self, momentum, target, sizes, rank, world, scale, alpha):
        """``(R, N)`` i2t and t2i targets: ``alpha`` (a float or 0-d tensor) of the momentum model's softmax."""
        image = require(momentum.image_embed, "outputs.momentum.image_embed", "itc")
        text = require(momentum.text_embed, "outputs.momentum.text_embed", "itc")
        all_image = gather_with_grad(image, sizes) if world > 1 else image
        all_text = gather_with_grad(text, sizes) if world > 1 else text
        rows_image, rows_text = (image, text) if self.cfg.local_loss else (all_image, all_text)
        soft_i2t = F.softmax((scale * rows_image @ all_text.t()).float(), dim=1)
        soft_t2i = F.softmax((scale * rows_text @ all_image.t()).float(), dim=1)
        if target.dtype == torch.long:
            target = F.one_hot(target, soft_i2t.shape[1]).float()
        return alpha * soft_i2t + (1 - alpha) * target, alpha * soft_t2i + (1 - alpha) * target


part(ObjectiveConfig, "itc", ITC)(ITCConfig)
