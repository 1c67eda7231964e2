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
(:func:`vlp.objectives.momentum.distill_weight`).

ALBEF's queue (``queue_size > 0``, :mod:`vlp.objectives.queue`): as in ALBEF's
``forward``, the columns are then the momentum model's features of the global
batch followed by the queue of earlier ones, ``sim_i2t = s * image @ [text_m; queue_text].T``
(and t2i alike), the soft targets are the momentum model's softmax over the
same columns, mixed ``alpha``:``1 - alpha`` with the one-hot (or same-image)
target, and after the loss the gathered momentum features are enqueued (in
training mode only). ``queue_size: 0`` is the plain path above, unchanged.
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
from vlp.objectives.queue import FeatureQueue


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
    queue_size: int = 0  # ALBEF/BLIP: momentum features of this many past samples as extra columns (0: off)

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
        if self.queue_size < 0:
            raise ValueError(f"queue_size must be >= 0 (0: no queue), got {self.queue_size}")


class ITC(Objective):
    """Symmetric InfoNCE on ``outputs.image_embed`` / ``outputs.text_embed`` (both ``(B, E)``, L2-normalized)."""

    name = "itc"

    def __init__(self, cfg: ITCConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.queue = FeatureQueue(cfg.queue_size) if cfg.queue_size > 0 else None

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
            offset = sum(sizes[:rank])
        else:
            sizes, all_image, all_text, all_ids, offset = [local], image, text, ids, 0

        if cfg.local_loss:
            rows_image, rows_text, row_ids, row_offset = image, text, ids, offset
        else:
            rows_image, rows_text, row_ids, row_offset = all_image, all_text, all_ids, 0
        if self.queue is not None:
            rows = (rows_image, rows_text, row_ids, row_offset)
            return self._queued(outputs, rows, ids, sizes, rank, world, scale)
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

        targets = (target_i2t, target_t2i, target)
        return self._loss(logits_i2t, logits_t2i, targets, sizes, rank, world, scale, logs)

    def _loss(self, logits_i2t, logits_t2i, targets, sizes, rank, world, scale, logs) -> tuple[torch.Tensor, Logs]:
        cfg = self.cfg
        target_i2t, target_t2i, target = targets
        loss_i2t = soft_cross_entropy(logits_i2t, target_i2t, cfg.label_smoothing)
        loss_t2i = soft_cross_entropy(logits_t2i, target_t2i, cfg.label_smoothing)
        loss = (loss_i2t + loss_t2i) / 2
        if cfg.local_loss and world > 1:
            # this rank's mean covers B_r of the N rows and DDP averages over ranks:
            # weight it so that the average over ranks is the mean over all N rows
            loss = loss * (sizes[rank] * world / sum(sizes))
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

    def _queued(self, outputs, rows, ids, sizes, rank, world, scale) -> tuple[torch.Tensor, Logs]:
        """ALBEF's ITC: columns = [momentum features of the batch; queue], then the global batch is enqueued."""
        cfg, queue = self.cfg, self.queue
        rows_image, rows_text, row_ids, row_offset = rows
        hint = "objectives.itc.queue_size > 0 needs the momentum model (model.momentum > 0)"
        momentum = require(outputs.momentum, "outputs.momentum", "itc", hint)
        m_image = require(momentum.image_embed, "outputs.momentum.image_embed", "itc").detach()
        m_text = require(momentum.text_embed, "outputs.momentum.text_embed", "itc").detach()
        # The queue takes every rank's batch, even when this loss is per rank (gather: false), so that
        # all ranks hold the same queue. Without gradient: a plain all_gather.
        q_rank, q_world = dist_info()
        q_sizes = sizes if q_world == world else gather_sizes(m_image.shape[0], m_image.device)
        all_m_image, all_m_text = gather_with_grad(m_image, q_sizes), gather_with_grad(m_text, q_sizes)
        all_ids = None if ids is None else gather_with_grad(ids, q_sizes)
        # the batch columns of this loss: the global batch, or this rank's own when gather is off
        lo, hi = (0, sum(q_sizes)) if world == q_world else (sum(q_sizes[:q_rank]), sum(q_sizes[: q_rank + 1]))
        q_image, q_text, q_ids = queue.columns(m_image)
        dtype = rows_image.dtype
        col_image = torch.cat([all_m_image[lo:hi].to(dtype), q_image.to(dtype)])
        col_text = torch.cat([all_m_text[lo:hi].to(dtype), q_text.to(dtype)])
        col_ids = None if all_ids is None else torch.cat([all_ids[lo:hi], q_ids])
        logits_i2t = scale * rows_image @ col_text.t()  # (R, N + Q)
        logits_t2i = scale * rows_text @ col_image.t()
        target = contrastive_targets(row_ids, col_ids, rows_image.shape[0], row_offset, rows_image.device)
        if target.dtype == torch.long:  # one-hot over the N + Q columns: the distillation mix needs it dense
            target = F.one_hot(target, col_text.shape[0]).float()
        target_i2t = target_t2i = target
        logs = {"itc_queue": torch.as_tensor(float(q_image.shape[0]))}
        if cfg.distill_alpha > 0:
            alpha = distill_weight(cfg.distill_alpha, cfg.distill_warmup_steps, outputs.extra.get(STEP_KEY), "itc")
            # the momentum model's rows are the same samples as the student's rows
            m_rows = (m_image, m_text) if cfg.local_loss else (all_m_image[lo:hi], all_m_text[lo:hi])
            with torch.no_grad():
                soft_i2t = F.softmax((scale * m_rows[0].to(dtype) @ col_text.t()).float(), dim=1)
                soft_t2i = F.softmax((scale * m_rows[1].to(dtype) @ col_image.t()).float(), dim=1)
            target_i2t = alpha * soft_i2t + (1 - alpha) * target
            target_t2i = alpha * soft_t2i + (1 - alpha) * target
            logs["itc_alpha"] = torch.as_tensor(alpha)
        targets = (target_i2t, target_t2i, target)
        result = self._loss(logits_i2t, logits_t2i, targets, sizes, rank, world, scale, logs)
        if self.training:  # not while evaluating: a validation pass must not change the training state
            queue.enqueue(all_m_image, all_m_text, all_ids)
        return result


part(ObjectiveConfig, "itc", ITC)(ITCConfig)
