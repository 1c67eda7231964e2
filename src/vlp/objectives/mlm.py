"""Masked language modelling conditioned on the image (BERT-style MLM of VisualBERT, UNITER, ViLT, ALBEF).

The masked text goes through ``model.text_tokens`` and ``model.fuse`` with the
image tokens of the shared unimodal pass, then ``model.heads["mlm"]``; the loss
is cross-entropy over the masked positions only. The head runs on the masked
positions alone (``(1, M, D)``), not on every token, which saves the large
``(B, L, vocab)`` product.

With momentum distillation (ALBEF) the target mixes the one-hot label with the
momentum model's MLM distribution on the same masked input:
``(1 - alpha) * CE(label) + alpha * CE(softmax(momentum logits))``, with ``alpha``
ramped up from 0 over the first ``distill_warmup_steps`` steps as in ALBEF
(:func:`vlp.objectives.momentum.distill_weight`).

The ids of [MASK], the vocabulary size and the special ids come from the
tokenizer (``build_objectives(..., tokenizer=tok)``) or from this config.

OSCAR: when the model joined object tags to the caption (``outputs.extra`` holds
the ids it read), the joined sequence is masked, tags included; ``batch.word_ids``
then no longer lines up, so only ``strategy: random`` is available.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from vlp.config import ConfigError, part
from vlp.objectives.base import Logs, Objective, ObjectiveConfig, ObjectiveOptions, make_generator, require
from vlp.objectives.masking import (
    IGNORE,
    corrupt,
    maskable_positions,
    select_random,
    select_spans,
    select_whole_words,
)
from vlp.objectives.momentum import STEP_KEY, distill_weight


@dataclass(eq=False)
class MLMConfig(ObjectiveOptions):
    strategy: Literal["random", "whole_word", "span"] = "random"
    prob: float = 0.15
    mask_replace: float = 0.8  # share of the chosen tokens replaced by [MASK]
    random_replace: float = 0.1  # share replaced by a random token; the rest stay unchanged
    span_p: float = 0.2  # span strategy: geometric parameter of the span length in words
    max_span: int = 10  # span strategy: lengths are clipped here
    distill_alpha: float = 0.4  # ALBEF: weight of the momentum model's soft targets (used when momentum is on)
    distill_warmup_steps: int = 0  # ALBEF: alpha ramps linearly from 0 over this many optimizer steps (0: off)
    seed: int | None = None  # a fixed seed for the masks; None = the global RNG (checkpointed by the engine)
    # filled from the tokenizer by build_objectives when not given here
    mask_id: int | None = None
    vocab_size: int | None = None
    special_ids: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.prob < 1.0:
            raise ValueError(f"prob must be in (0, 1), got {self.prob}")
        if self.mask_replace < 0 or self.random_replace < 0 or self.mask_replace + self.random_replace > 1.0:
            raise ValueError(
                f"mask_replace ({self.mask_replace}) and random_replace ({self.random_replace}) must be >= 0 "
                "and sum to at most 1"
            )
        if not 0.0 < self.span_p <= 1.0 or self.max_span < 1:
            raise ValueError(f"span_p must be in (0, 1] and max_span >= 1, got {self.span_p}, {self.max_span}")
        if not 0.0 <= self.distill_alpha <= 1.0:
            raise ValueError(f"distill_alpha must be in [0, 1], got {self.distill_alpha}")
        if self.distill_warmup_steps < 0:
            raise ValueError(f"distill_warmup_steps must be >= 0, got {self.distill_warmup_steps}")


class MLM(Objective):
    """Masked language modelling on fused text tokens via ``model.heads["mlm"]`` (``(..., D) -> (..., vocab)``)."""

    name = "mlm"

    def __init__(self, cfg: MLMConfig) -> None:
        super().__init__()
        if cfg.mask_id is None or cfg.vocab_size is None:
            raise ConfigError(
                "objectives.mlm.mask_id / vocab_size: unknown; pass the tokenizer to "
                "build_objectives(..., tokenizer=tok) or set both in the recipe"
            )
        self.cfg = cfg
        special = set(cfg.special_ids) | {cfg.mask_id}
        # random replacements are drawn from the ordinary vocabulary only
        self.register_buffer(
            "random_ids",
            torch.tensor([i for i in range(cfg.vocab_size) if i not in special], dtype=torch.long),
            persistent=False,
        )
        self.register_buffer("special_ids", torch.tensor(sorted(cfg.special_ids), dtype=torch.long), persistent=False)
        self._generators: dict[str, torch.Generator] = {}

    def mask(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        word_ids: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(masked input_ids, labels)``, both ``(B, L)``; labels are -100 except at chosen positions."""
        cfg = self.cfg
        maskable = maskable_positions(input_ids, attention_mask, word_ids, self.special_ids.to(input_ids.device))
        if cfg.strategy == "random":
            selected = select_random(maskable, cfg.prob, generator)
        else:
            hint = f"strategy {cfg.strategy!r} masks whole words (with OSCAR tags joined, use strategy: random)"
            word_ids = require(word_ids, "batch.word_ids", "mlm", hint)
            if cfg.strategy == "whole_word":
                selected = select_whole_words(word_ids, maskable, cfg.prob, generator)
            else:
                selected = select_spans(word_ids, maskable, cfg.prob, generator, cfg.span_p, cfg.max_span)
        return corrupt(
            input_ids, selected, cfg.mask_id, self.random_ids, generator, cfg.mask_replace, cfg.random_replace
        )

    @staticmethod
    def _masked_logits(model, ids, attention, types, image, where: torch.Tensor) -> torch.Tensor:
        text = model.text_tokens(ids, attention, types)
        fused = model.fuse(text, attention, image)
        tokens = require(fused.text, "fused text tokens", "mlm", "this fusion design does not update the text")
        return model.heads["mlm"](tokens[where].unsqueeze(0)).squeeze(0)  # (M, vocab)

    def compute(self, outputs, batch) -> tuple[torch.Tensor, Logs]:
        image = require(outputs.image, "outputs.image", "mlm")
        # the text the model actually read: with OSCAR tags joined it is [CLS] caption [SEP] tags [SEP],
        # and the tags are masked like words (as OSCAR does); batch.word_ids then no longer lines up
        ids = outputs.extra.get("input_ids", require(batch.input_ids, "batch.input_ids", "mlm"))
        attention = outputs.extra.get("attention_mask", require(batch.attention_mask, "batch.attention_mask", "mlm"))
        types = outputs.extra.get("token_type_ids", batch.token_type_ids)
        word_ids = batch.word_ids if ids.shape == batch.input_ids.shape else None
        generator = make_generator(self.cfg.seed, ids.device, self._generators)
        masked_ids, labels = self.mask(ids, attention, word_ids, generator)
        where = labels != IGNORE
        logits = self._masked_logits(outputs.model, masked_ids, attention, types, image, where).float()
        target = labels[where]
        cfg, momentum, logs = self.cfg, outputs.momentum, {}
        distilling = momentum is not None and cfg.distill_alpha > 0
        if distilling:
            alpha = distill_weight(cfg.distill_alpha, cfg.distill_warmup_steps, outputs.extra.get(STEP_KEY), "mlm")
            logs["mlm_alpha"] = torch.as_tensor(alpha)  # in every step's logs: ranks reduce the same keys
        if target.numel() == 0:  # nothing masked (tiny batch): a zero loss that still touches the head
            return logits.sum() * 0.0, {"mlm_acc": logits.new_zeros(()), **logs}
        loss = F.cross_entropy(logits, target)
        if distilling:
            with torch.no_grad():
                m_image = require(momentum.image, "outputs.momentum.image", "mlm")
                m_logits = self._masked_logits(momentum.model, masked_ids, attention, types, m_image, where)
                soft = F.softmax(m_logits.float(), -1)
            distill = -(soft * F.log_softmax(logits, -1)).sum(-1).mean()
            loss = (1 - alpha) * loss + alpha * distill
        with torch.no_grad():
            acc = (logits.argmax(-1) == target).float().mean()
        return loss, {"mlm_acc": acc, **logs}


part(ObjectiveConfig, "mlm", MLM)(MLMConfig)
