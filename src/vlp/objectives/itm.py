"""Image-text matching (UNITER, ViLT, ALBEF, BLIP): binary classification of pairs.

For a batch of B matched pairs the fusion encoder sees 3B pairs: the B
positives, each text with a negative image, and each image with a negative
text; ``model.heads["itm"]`` maps the pooled fused output to 2 logits (label 1 =
match). Negatives are drawn per row from

- ``hard`` (ALBEF): ``softmax`` of the ITC similarities (no gradient) with the
  positives masked out, so similar-looking but wrong partners are likely;
- ``random`` (UNITER/ViLT): uniformly among the non-positives.

A non-positive is any other sample, excluding samples of the same image when
``batch.image_index`` is given (another caption of the same image is not a
negative). Rows with no possible negative (batch of one image) get none.
Negatives come from this rank's batch only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from vlp.config import ConfigError, part
from vlp.objectives.base import (
    Logs,
    Objective,
    ObjectiveConfig,
    ObjectiveOptions,
    make_generator,
    require,
    select_visual,
)


def positive_mask(batch_size: int, image_index: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """``(B, B)`` bool: True where pair (i, j) is a positive (same sample, or same image id)."""
    if image_index is None:
        return torch.eye(batch_size, dtype=torch.bool, device=device)
    return image_index[:, None] == image_index[None, :]


def sample_negatives(
    scores: torch.Tensor | None,
    positive: torch.Tensor,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row, draw one column that is not a positive.

    ``scores`` ``(B, B)`` are similarities (hard sampling: probability
    ``softmax(scores)`` renormalized over the non-positives) or None (uniform).
    Returns ``(index (B,) long, valid (B,) bool)``; rows without any
    non-positive are not valid and their index is meaningless.
    """
    allowed = ~positive
    if scores is None:
        weights = allowed.float()
    else:
        # a softmax over the allowed entries only: positives get probability exactly 0
        weights = F.softmax(scores.float().masked_fill(positive, float("-inf")), dim=1)
        weights = torch.nan_to_num(weights, nan=0.0) * allowed
    valid = allowed.any(1)
    weights = torch.where(valid[:, None], weights, torch.ones_like(weights))  # multinomial rejects all-zero rows
    index = torch.multinomial(weights, 1, generator=generator).squeeze(1)
    return index, valid


@dataclass
class ITMConfig(ObjectiveOptions):
    negatives: Literal["hard", "random"] = "hard"
    seed: int | None = None  # a fixed seed for the negative sampler; None = the global RNG (checkpointed)


class ITM(Objective):
    """Binary matching loss through ``model.fuse`` and ``model.heads["itm"]`` (pooled ``(B, D)`` -> ``(B, 2)``)."""

    name = "itm"

    def __init__(self, cfg: ITMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self._generators: dict[str, torch.Generator] = {}

    def compute(self, outputs, batch) -> tuple[torch.Tensor, Logs]:
        model = outputs.model
        text = require(outputs.text, "outputs.text", "itm")
        text_mask = require(outputs.text_mask, "outputs.text_mask", "itm")
        image = require(outputs.image, "outputs.image", "itm")
        size, device = text.shape[0], text.device
        positive = positive_mask(size, batch.image_index, device)

        sims_t2i = sims_i2t = None
        if self.cfg.negatives == "hard":
            if outputs.image_embed is None or outputs.text_embed is None:
                raise ConfigError(
                    "objectives.itm.negatives: 'hard' needs the model's ITC embeddings "
                    "(model.embed_dim > 0); use negatives: random for models without a dual-encoder side"
                )
            with torch.no_grad():
                sims_i2t = outputs.image_embed.float() @ outputs.text_embed.float().t()
                if outputs.logit_scale is not None:  # ALBEF samples from softmax(sim / temperature)
                    sims_i2t = sims_i2t * outputs.logit_scale.float().clamp(max=math.log(100.0)).exp()
                sims_t2i = sims_i2t.t()
        gen = make_generator(self.cfg.seed, device, self._generators)
        neg_image, valid_t = sample_negatives(sims_t2i, positive, gen)  # a negative image for each text
        neg_text, valid_i = sample_negatives(sims_i2t, positive, gen)  # a negative text for each image
        rows_t = torch.nonzero(valid_t).squeeze(1)
        rows_i = torch.nonzero(valid_i).squeeze(1)

        # one fusion pass over [positives; text + wrong image; wrong text + image]
        all_rows = torch.arange(size, device=device)
        text_idx = torch.cat([all_rows, rows_t, neg_text[rows_i]])
        image_idx = torch.cat([all_rows, neg_image[rows_t], rows_i])
        fused = model.fuse(text[text_idx], text_mask[text_idx], select_visual(image, image_idx))
        logits = model.heads["itm"](fused.pooled)
        labels = torch.zeros(text_idx.shape[0], dtype=torch.long, device=device)
        labels[:size] = 1
        loss = F.cross_entropy(logits.float(), labels)
        with torch.no_grad():
            acc = (logits.argmax(1) == labels).float().mean()
        return loss, {"itm_acc": acc}


part(ObjectiveConfig, "itm", ITM)(ITMConfig)
