"""Image-grounded language modelling (captioning loss of BLIP, SimVLM-style prefix LM).

``model.decode(input_ids, attention_mask, image) -> (B, L, vocab)`` runs a
causal text decoder that cross-attends to the image tokens of the shared
unimodal pass. Position t predicts token t+1 (shift by one); padding and the
first ``prompt_length`` target tokens (BLIP ignores its prompt "a picture of ")
do not count.

BOS: the decoder input starts with the tokenizer's [CLS], used as the
beginning-of-sequence token. BLIP replaces it by a dedicated [DEC] token; set
``bos_id`` to such an id to do the same. The sequence's [SEP] is the end token
and is predicted like any other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vlp.config import part
from vlp.objectives.base import Logs, Objective, ObjectiveConfig, ObjectiveOptions, require
from vlp.objectives.masking import IGNORE


def shifted_lm_targets(input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_length: int = 0) -> torch.Tensor:
    """Targets ``(B, L-1)`` for logits at positions ``0..L-2``: the next token, -100 on padding and the prompt."""
    targets = input_ids[:, 1:].masked_fill(~attention_mask[:, 1:].bool(), IGNORE)
    if prompt_length > 0:
        targets[:, :prompt_length] = IGNORE
    return targets


@dataclass(eq=False)
class LMConfig(ObjectiveOptions):
    label_smoothing: float = 0.0  # BLIP uses 0.1
    bos_id: int | None = None  # replaces the first token ([CLS]) when set, e.g. BLIP's [DEC]
    prompt_length: int = 0  # target tokens after BOS that are a fixed prompt and not learned

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.prompt_length < 0:
            raise ValueError(f"prompt_length must be >= 0, got {self.prompt_length}")


class LM(Objective):
    """Causal captioning loss through ``model.decode``."""

    name = "lm"

    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def compute(self, outputs, batch) -> tuple[torch.Tensor, Logs]:
        ids = require(batch.input_ids, "batch.input_ids", "lm")
        attention = require(batch.attention_mask, "batch.attention_mask", "lm")
        image = require(outputs.image, "outputs.image", "lm")
        if self.cfg.bos_id is not None:
            ids = ids.clone()
            ids[:, 0] = self.cfg.bos_id
        logits = outputs.model.decode(ids, attention, image)  # (B, L, V)
        targets = shifted_lm_targets(batch.input_ids, attention, self.cfg.prompt_length)
        flat_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
        loss = F.cross_entropy(
            flat_logits, targets.reshape(-1), ignore_index=IGNORE, label_smoothing=self.cfg.label_smoothing
        )
        with torch.no_grad():
            counted = targets.reshape(-1) != IGNORE
            acc = (flat_logits.argmax(-1) == targets.reshape(-1))[counted].float().mean()
        return loss, {"lm_acc": acc}


part(ObjectiveConfig, "lm", LM)(LMConfig)
