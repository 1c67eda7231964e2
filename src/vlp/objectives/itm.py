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

Word-swap negatives (``swap_words``, NegCLIP-style, :mod:`vlp.objectives.swaps`): each positive whose
caption holds a word of a swap group (with probability ``swap_fraction``) also gets its own image paired
with the caption in which one such word is replaced by another concept of its group, labelled not
matching. These pairs go through the same fusion pass; their loss is added with weight ``swap_weight``:
``swap_loss: binary`` the mean cross-entropy against label 0, ``pair`` the mean of
``-log softmax([m(I, T), m(I, T_swap)])[0]`` over the ITM match margins ``m = logit_1 - logit_0``.
With ``swap_itc_weight > 0`` the swapped caption is also a text negative on the dual side:
``-log softmax([s(I, T), s(I, T_swap)] * exp(logit_scale))[0]`` for each swapped pair, averaged.
The groups are resolved to token ids by :meth:`ITM.resolve_swaps` (``build_objectives`` calls it with the
tokenizer); words that are not a single token are skipped and listed in ``ITM.swap_skipped``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

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
from vlp.objectives.itc import capped_scale
from vlp.objectives.swaps import SwapTable, draw_swaps, resolve_swap_groups, swappable_positions


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
        # Non-finite similarities (a diverging run) make whole rows NaN, hence all zero here, and
        # multinomial would raise. Draw such rows uniformly instead: the embeddings are broken anyway,
        # so the loss comes out non-finite and the engine's guard skips the step, as for any objective.
        broken = ~(weights.sum(1) > 0)
        weights = torch.where(broken[:, None], allowed.float(), weights)
    valid = allowed.any(1)
    weights = torch.where(valid[:, None], weights, torch.ones_like(weights))  # multinomial rejects all-zero rows
    index = torch.multinomial(weights, 1, generator=generator).squeeze(1)
    return index, valid


@dataclass(eq=False)
class ITMConfig(ObjectiveOptions):
    negatives: Literal["hard", "random"] = "hard"
    seed: int | None = None  # a fixed seed for the negative sampler; None = the global RNG (checkpointed)
    # word-swap negatives: groups of interchangeable words, synonyms of one concept joined by "/"
    swap_words: list[list[str]] = field(default_factory=list)
    swap_fraction: float = 1.0  # probability that a caption with a swappable word gets a swap negative
    swap_weight: float = 1.0  # weight of the swap pairs' loss, added to the ITM loss
    # binary: each swap pair labelled "no match"; pair: softmax over the match margins of (true caption,
    # its swap) for the same image, which asks only for the ranking and not for a bias towards "no"
    swap_loss: Literal["binary", "pair"] = "binary"
    swap_itc_weight: float = 0.0  # weight of the dual-side term (swapped caption as the image's text negative)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.swap_fraction <= 1.0:
            raise ValueError(f"swap_fraction must be in (0, 1], got {self.swap_fraction}")
        if self.swap_weight < 0 or self.swap_itc_weight < 0:
            raise ValueError(f"swap_weight and swap_itc_weight must be >= 0, got {self.swap_weight}, "
                             f"{self.swap_itc_weight}")  # fmt: skip


class ITM(Objective):
    """Binary matching loss through ``model.fuse`` and ``model.heads["itm"]`` (pooled ``(B, D)`` -> ``(B, 2)``)."""

    name = "itm"

    def __init__(self, cfg: ITMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self._generators: dict[str, torch.Generator] = {}
        self.swap_skipped: list[str] = []
        self._swap: SwapTable | None = None

    def resolve_swaps(self, tokenizer: Any, vocab_size: int | None = None) -> None:
        """Resolve ``cfg.swap_words`` to token ids with ``tokenizer`` (a no-op without swap words)."""
        if not self.cfg.swap_words:
            return
        vocab_size = vocab_size if vocab_size is not None else int(tokenizer.vocab_size)
        self._swap = resolve_swap_groups(self.cfg.swap_words, tokenizer, vocab_size)
        self.swap_skipped = self._swap.skipped
        if self.swap_skipped:
            warnings.warn(
                f"objectives.itm.swap_words: {len(self.swap_skipped)} word(s) are not one token of the vocabulary "
                f"and are never swapped: {', '.join(self.swap_skipped)}",
                stacklevel=2,
            )

    def _swap_table(self, device: torch.device) -> SwapTable:
        if self._swap is None:
            raise ConfigError(
                "objectives.itm.swap_words: the words are not resolved to token ids; build the objectives with "
                "build_objectives(..., tokenizer=tok) or call ITM.resolve_swaps(tok)"
            )
        if self._swap.tokens.device != device:  # kept off the state dict: a recipe option, not a weight
            t = self._swap
            self._swap = SwapTable(t.token_concept.to(device), t.replacement.to(device), t.tokens.to(device), t.skipped)
        return self._swap

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
                    sims_i2t = sims_i2t * capped_scale(outputs.logit_scale.float())
                sims_t2i = sims_i2t.t()
        gen = make_generator(self.cfg.seed, device, self._generators)
        neg_image, valid_t = sample_negatives(sims_t2i, positive, gen)  # a negative image for each text
        neg_text, valid_i = sample_negatives(sims_i2t, positive, gen)  # a negative text for each image
        rows_t = torch.nonzero(valid_t).squeeze(1)
        rows_i = torch.nonzero(valid_i).squeeze(1)

        # one fusion pass over [positives; text + wrong image; wrong text + image; swapped text + image]
        all_rows = torch.arange(size, device=device)
        text_idx = torch.cat([all_rows, rows_t, neg_text[rows_i]])
        image_idx = torch.cat([all_rows, neg_image[rows_t], rows_i])
        texts, masks = text[text_idx], text_mask[text_idx]
        swap = self._swap_pairs(outputs, batch, gen) if self.cfg.swap_words else None
        if swap is not None:
            swap_rows, swap_ids, swap_mask, swap_types = swap
            swap_text = model.text_tokens(swap_ids, swap_mask, swap_types)
            texts, masks = torch.cat([texts, swap_text]), torch.cat([masks, swap_mask.to(masks.dtype)])
            image_idx = torch.cat([image_idx, swap_rows])
        fused = model.fuse(texts, masks, select_visual(image, image_idx))
        logits = model.heads["itm"](fused.pooled).float()
        labels = torch.zeros(image_idx.shape[0], dtype=torch.long, device=device)
        labels[:size] = 1
        n = text_idx.shape[0]  # the pairs before the swaps
        loss = F.cross_entropy(logits[:n], labels[:n])
        with torch.no_grad():
            logs: Logs = {"itm_acc": (logits[:n].argmax(1) == labels[:n]).float().mean()}
        if self.cfg.swap_words:
            swapped = 0 if swap is None else swap[0].numel()
            logs["itm_swap_frac"] = torch.tensor(swapped / size, device=device)
            if swap is not None:
                # match margins (log-odds of "match") of each swapped row's true caption and of its swap
                margin = logits[:, 1] - logits[:, 0]
                pair = torch.stack([margin[swap[0]], margin[n:]], 1)
                if self.cfg.swap_loss == "pair":
                    swap_loss = F.cross_entropy(pair, torch.zeros_like(swap[0]))
                else:
                    swap_loss = F.cross_entropy(logits[n:], labels[n:])
                loss = loss + self.cfg.swap_weight * swap_loss
                with torch.no_grad():
                    logs["itm_swap_acc"] = (logits[n:].argmax(1) == 0).float().mean()
                    # paired: does the true caption get the higher margin? (swap_acc alone is 1.0 for a head
                    # that answers "no match" to everything)
                    logs["itm_swap_rank"] = (pair[:, 0] > pair[:, 1]).float().mean()
                if self.cfg.swap_itc_weight > 0:
                    itc_loss, logs["itm_swap_itc_acc"] = self._swap_itc(outputs, *swap)
                    loss = loss + self.cfg.swap_itc_weight * itc_loss
        return loss, logs

    def _swap_pairs(self, outputs, batch, gen) -> tuple[torch.Tensor, ...] | None:
        """``(rows (S,), ids (S, L), mask (S, L), token types (S, L) or None)`` of the swapped captions, or None."""
        ids = outputs.extra.get("input_ids", batch.input_ids)
        mask = require(outputs.text_mask, "outputs.text_mask", "itm")
        types = outputs.extra.get("token_type_ids", batch.token_type_ids)
        table = self._swap_table(ids.device)
        positions = swappable_positions(ids, mask, table.token_concept, batch.word_ids)
        rows, swapped = draw_swaps(ids, positions, table, self.cfg.swap_fraction, gen)
        if rows.numel() == 0:
            return None
        return rows, swapped, mask[rows], None if types is None else types[rows]

    def _swap_itc(self, outputs, rows, ids, mask, types) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean over swapped pairs of ``-log softmax(scale * [s(I, T), s(I, T_swap)])[0]``, and the fraction
        of pairs where ``s(I, T) > s(I, T_swap)``."""
        image_embed = require(outputs.image_embed, "outputs.image_embed", "itm", "swap_itc_weight needs embed_dim > 0")
        text_embed = require(outputs.text_embed, "outputs.text_embed", "itm", "swap_itc_weight needs embed_dim > 0")
        swap_embed = outputs.model.encode_text(ids, mask, types)
        image = image_embed[rows].float()
        sims = torch.stack([(image * text_embed[rows].float()).sum(-1), (image * swap_embed.float()).sum(-1)], 1)
        scale = 1.0 if outputs.logit_scale is None else capped_scale(outputs.logit_scale.float())
        loss = F.cross_entropy(sims * scale, torch.zeros(rows.numel(), dtype=torch.long, device=rows.device))
        return loss, (sims[:, 0] > sims[:, 1]).float().mean().detach()


part(ObjectiveConfig, "itm", ITM)(ITMConfig)
