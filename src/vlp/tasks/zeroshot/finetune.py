"""Zero-shot fine-tuning (FLYP-style): both towers trained contrastively against every class's prompt."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from vlp.config import ConfigError, from_dict
from vlp.data import build_loader
from vlp.data.batch import Batch
from vlp.objectives.base import logs_to_floats
from vlp.tasks.common import has_dual
from vlp.tasks.zeroshot.head import encode_texts, logit_scale, resolve_templates
from vlp.tasks.zeroshot.labels import batch_labels, class_vocabulary, dataset_colors


@dataclass
class ZeroShotTask:
    """The ``task:`` section of a zero-shot classification recipe."""

    type: str = "zeroshot"
    by: Literal["shape", "color", "color_shape"] = "shape"
    templates: list[str] | str = "photo"
    objects: Literal["largest", "single"] = "largest"
    # written by build_finetuning: the classes the prompts name, in label order
    class_names: list[str] = field(default_factory=list)


class PromptContrastive(nn.Module):
    """Fine-tuning module: ``forward(batch) -> (loss, logs)``, cross-entropy of the image embedding
    against the prompt embeddings of every class (one random template per class and step).

    Logs ``acc`` (top-1 of those logits) and ``used`` (share of the batch with a label).
    """

    def __init__(self, model: nn.Module, tokenizer: Any, class_names: Sequence[str], templates: Sequence[str],
                 by: str, objects: str, categories: Sequence[str], max_len: int, seed: int = 0) -> None:  # fmt: skip
        super().__init__()
        if not has_dual(model):
            raise ConfigError("zero-shot fine-tuning needs a dual-encoder side (model.embed_dim > 0)")
        self.model, self.tokenizer = model, tokenizer
        self.class_names, self.templates = list(class_names), resolve_templates(templates)
        self.by, self.objects, self.categories, self.max_len = by, objects, list(categories), max_len
        self.rng = random.Random(seed)

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        labels = batch_labels(batch, self.by, self.objects, self.categories, self.class_names)
        labels = labels.to(batch.images.device if batch.images is not None else "cpu")
        prompts = [self.rng.choice(self.templates).format(name) for name in self.class_names]
        classes = encode_texts(self.model, self.tokenizer, prompts, self.max_len)
        logits = logit_scale(self.model) * self.model.encode_image(batch) @ classes.T
        used = labels >= 0
        if not bool(used.any()):
            return logits.sum() * 0.0, {"acc": 0.0, "used": 0.0}
        loss = F.cross_entropy(logits.float(), labels, ignore_index=-100)
        with torch.no_grad():
            acc = (logits.argmax(1) == labels)[used].float().mean()
        return loss, logs_to_floats({"acc": acc, "used": used.float().mean()})


def build_finetuning(
    task: dict[str, Any], recipe: Any, model: Any, tokenizer: Any, *, rank: int = 0, world_size: int = 1
) -> tuple[Any, Any]:
    """``(PromptContrastive, COCO-instances train loader)``; records ``class_names`` in the task."""
    opts = from_dict(ZeroShotTask, task, "task")
    loader = build_loader(
        recipe.data, "train", tokenizer, recipe.train.batch_size, num_workers=recipe.train.num_workers,
        rank=rank, world_size=world_size, pin_memory=torch.cuda.is_available(),
    )  # fmt: skip
    index = getattr(loader.dataset, "index", None)
    if index is None or "categories" not in index.extras:
        raise ConfigError("data: zero-shot fine-tuning reads COCO instances (ShapesWorld: options.format: instances)")
    categories = index.extras["categories"]
    names = opts.class_names or class_vocabulary(opts.by, categories, dataset_colors(recipe.data.root, index.records))
    task["class_names"] = names
    module = PromptContrastive(model, tokenizer, names, resolve_templates(opts.templates), opts.by, opts.objects,
                               categories, recipe.data.max_text_len, recipe.data.seed + rank)  # fmt: skip
    return module, loader
