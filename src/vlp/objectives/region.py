"""Masked region modelling for region inputs (UNITER, LXMERT, VisualBERT-style MRP).

``prob`` of each image's real regions are masked by zeroing their input
features (at least one per image); the masked regions go through
``model.image_tokens`` and ``model.fuse`` with the *unmasked* text (UNITER's
conditional masking: one modality at a time), and only the masked positions
count:

- MRC, masked region classification: ``model.heads["mrc"]`` predicts the
  detector's class; ``variant: ce`` is cross-entropy to the argmax of
  ``batch.region_class_probs``, ``variant: kl`` is KL(detector || prediction)
  against the whole distribution (UNITER's MRC-kl).
- MRFR, masked region feature regression: ``model.heads["mrfr"]`` projects the
  fused token back to the feature size; the loss is the mean squared error to
  the original features over the masked regions (mean over regions and dims).

When both objectives are on with the same ``prob`` (and no fixed seed) they
share one masked pass, cached in ``outputs.extra``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from vlp.config import ConfigError, part
from vlp.objectives.base import Logs, Objective, ObjectiveConfig, ObjectiveOptions, make_generator, require
from vlp.objectives.masking import uniform


def select_regions(region_mask: torch.Tensor, prob: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``(B, R)`` bool: each real region with probability ``prob``, and at least one per image that has any."""
    u = uniform(tuple(region_mask.shape), region_mask.device, generator).to(region_mask.device)
    chosen = region_mask & (u < prob)
    # images where nothing was drawn: take their real region with the smallest draw
    empty = ~chosen.any(1) & region_mask.any(1)
    if empty.any():
        fallback = u.masked_fill(~region_mask, 2.0).argmin(1)
        chosen[empty, fallback[empty]] = True
    return chosen


def masked_region_pass(outputs, batch, prob: float, generator: torch.Generator | None, objective: str):
    """Mask regions, run the image and fusion again: ``(masked (B, R) bool, fused image tokens (B, R, D))``."""
    key = f"masked_regions:{prob}"
    if generator is None and key in outputs.extra:
        return outputs.extra[key]
    features = require(batch.region_features, "batch.region_features", objective, "it is a region-input objective")
    region_mask = batch.region_mask
    if region_mask is None:
        region_mask = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
    masked = select_regions(region_mask, prob, generator)
    model = outputs.model
    image = model.image_tokens(batch.replace(region_features=features.masked_fill(masked[..., None], 0.0)))
    text = require(outputs.text, "outputs.text", objective)
    fused = model.fuse(text, require(outputs.text_mask, "outputs.text_mask", objective), image)
    tokens = require(fused.image, "fused image tokens", objective, "this fusion design does not update the image")
    if tokens.shape[1] != features.shape[1]:
        raise ConfigError(
            f"objectives.{objective}: the fused image has {tokens.shape[1]} tokens but the batch has "
            f"{features.shape[1]} regions; region objectives need one visual token per region"
        )
    if generator is None:
        outputs.extra[key] = (masked, tokens)
    return masked, tokens


@dataclass(eq=False)
class MaskedRegionOptions(ObjectiveOptions):
    """Options of both region objectives: the masking probability and an optional fixed seed."""

    prob: float = 0.15
    seed: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.prob <= 1.0:
            raise ValueError(f"prob must be in (0, 1], got {self.prob}")


@dataclass(eq=False)
class MRCConfig(MaskedRegionOptions):
    variant: Literal["ce", "kl"] = "ce"


@dataclass(eq=False)
class MRFRConfig(MaskedRegionOptions):
    pass


class _MaskedRegionObjective(Objective):
    """Holds the config and the per-device generators of a fixed ``seed`` (see :func:`make_generator`)."""

    def __init__(self, cfg: MaskedRegionOptions) -> None:
        super().__init__()
        self.cfg = cfg
        self._generators: dict[str, torch.Generator] = {}


class MRC(_MaskedRegionObjective):
    """Masked region classification via ``model.heads["mrc"]`` (``(..., D) -> (..., classes)``)."""

    name = "mrc"
    cfg: MRCConfig

    def compute(self, outputs, batch) -> tuple[torch.Tensor, Logs]:
        probs = require(batch.region_class_probs, "batch.region_class_probs", "mrc", "the detector's class scores")
        generator = make_generator(self.cfg.seed, probs.device, self._generators)
        masked, tokens = masked_region_pass(outputs, batch, self.cfg.prob, generator, "mrc")
        logits = outputs.model.heads["mrc"](tokens[masked].unsqueeze(0)).squeeze(0).float()  # (M, C)
        target = probs[masked].float()
        if logits.shape[-1] != target.shape[-1]:
            raise ConfigError(
                f"objectives.mrc: the mrc head predicts {logits.shape[-1]} classes but "
                f"batch.region_class_probs has {target.shape[-1]}"
            )
        log_q = F.log_softmax(logits, -1)
        if self.cfg.variant == "ce":
            loss = F.nll_loss(log_q, target.argmax(-1))
        else:  # KL(p || q) = sum p (log p - log q); 0 log 0 = 0
            loss = (torch.xlogy(target, target) - target * log_q).sum(-1).mean()
        with torch.no_grad():
            acc = (logits.argmax(-1) == target.argmax(-1)).float().mean()
        return loss, {"mrc_acc": acc}


class MRFR(_MaskedRegionObjective):
    """Masked region feature regression via ``model.heads["mrfr"]`` (``(..., D) -> (..., F)``)."""

    name = "mrfr"

    def compute(self, outputs, batch) -> tuple[torch.Tensor, Logs]:
        features = require(batch.region_features, "batch.region_features", "mrfr")
        generator = make_generator(self.cfg.seed, features.device, self._generators)
        masked, tokens = masked_region_pass(outputs, batch, self.cfg.prob, generator, "mrfr")
        prediction = outputs.model.heads["mrfr"](tokens[masked].unsqueeze(0)).squeeze(0).float()  # (M, F)
        target = features[masked].float()
        if prediction.shape != target.shape:
            raise ConfigError(
                f"objectives.mrfr: the mrfr head outputs {prediction.shape[-1]} values per region but "
                f"the region features have {target.shape[-1]}"
            )
        return F.mse_loss(prediction, target), {}


part(ObjectiveConfig, "mrc", MRC)(MRCConfig)
part(ObjectiveConfig, "mrfr", MRFR)(MRFRConfig)
