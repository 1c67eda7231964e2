"""Fine-tuning the image-grounded decoder for captioning: the LM loss of ``prompt + caption``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vlp.config import ConfigError, from_dict
from vlp.core.outputs import ModelOutputs
from vlp.data import build_loader
from vlp.data.batch import Batch
from vlp.objectives import LM, LMConfig
from vlp.tasks.captioning.decode import prompt_ids


@dataclass
class CaptionTask:
    """The ``task:`` section of a captioning recipe."""

    type: str = "captioning"
    prompt: str = "a picture of "  # BLIP's; "" = none
    label_smoothing: float = 0.0  # BLIP fine-tunes with 0.1

    def __post_init__(self) -> None:
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")


class CaptionFinetune(nn.Module):
    """``forward(batch) -> (loss, logs)``: LM loss of ``prompt + caption`` given the image."""

    def __init__(self, model: nn.Module, tokenizer: Any, prompt: str = "a picture of ", label_smoothing: float = 0.0,
                 max_text_len: int = 40) -> None:  # fmt: skip
        super().__init__()
        if getattr(model, "decoder", None) is None:
            raise ConfigError(f"captioning needs a text decoder (model.decoder); model {model.cfg.name!r} has none")
        self.model = model
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.max_text_len = max_text_len
        prompt_length = len(prompt_ids(tokenizer, prompt)) - 1  # word pieces after [CLS]
        self.lm = LM(LMConfig(label_smoothing=label_smoothing, prompt_length=prompt_length))

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        if self.prompt:  # the loader tokenized the bare caption: re-tokenize with the prompt in front
            tok = self.tokenizer([self.prompt + m["text"] for m in batch.meta], max_length=self.max_text_len)
            device = next(self.model.parameters()).device
            batch = batch.replace(input_ids=tok.input_ids.to(device), attention_mask=tok.attention_mask.to(device))
        outputs = ModelOutputs(model=self.model, image=self.model.image_tokens(batch))
        loss, logs = self.lm(outputs, batch)
        return loss, {"loss_lm": float(loss.detach()), **logs}


def build_finetuning(
    task: dict[str, Any], recipe: Any, model: Any, tokenizer: Any, *, rank: int = 0, world_size: int = 1
) -> tuple[Any, Any]:
    """``(CaptionFinetune, caption-pair train loader)`` for ``vlp finetune``."""
    opts = from_dict(CaptionTask, task, "task")
    module = CaptionFinetune(model, tokenizer, opts.prompt, opts.label_smoothing, recipe.data.max_text_len)
    loader = build_loader(
        recipe.data, "train", tokenizer, recipe.train.batch_size, num_workers=recipe.train.num_workers,
        rank=rank, world_size=world_size, pin_memory=torch.cuda.is_available(),
    )  # fmt: skip
    return module, loader


__all__ = ["CaptionFinetune", "CaptionTask", "build_finetuning"]
