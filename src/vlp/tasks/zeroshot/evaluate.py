"""Zero-shot evaluation: top-1 / top-5 and mean per-class accuracy of the class embeddings on labelled
images, with chance levels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from vlp.data.config import DataConfig
from vlp.metrics.classification import mean_class_accuracy, topk_accuracy
from vlp.objectives.itc import MAX_LOGIT_SCALE
from vlp.tasks.common import build_eval_dataset, model_data_config
from vlp.tasks.zeroshot.head import class_embeddings, logit_scale, resolve_templates
from vlp.tasks.zeroshot.labels import labelled_features


def zero_shot_scores(
    image_embeds: torch.Tensor, class_embeds: torch.Tensor, labels: torch.Tensor, scale: float = MAX_LOGIT_SCALE
) -> dict[str, Any]:
    """Top-1/top-5/mean per-class accuracy and chance levels of ``(N, E)`` images vs ``(C, E)`` classes."""
    logits = scale * image_embeds @ class_embeds.T
    counts = torch.bincount(labels, minlength=class_embeds.shape[0])
    num = class_embeds.shape[0]
    return {
        **topk_accuracy(logits, labels),
        "mean_class_accuracy": mean_class_accuracy(logits.argmax(1), labels),
        "n_images": int(labels.numel()),
        "n_classes": num,
        "chance": {
            "top1": 100.0 / num,
            "top5": 100.0 * min(5, num) / num,
            "majority": 100.0 * counts.max().item() / labels.numel(),
        },  # fmt: skip
    }


def evaluate(
    model: Any,
    tokenizer: Any,
    data: Any,
    *,
    split: str = "test",
    by: str = "shape",
    templates: str | Sequence[str] = "photo",
    objects: str = "largest",
    class_names: Sequence[str] | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
) -> dict[str, Any]:
    """Zero-shot accuracy of a dual encoder on labelled images (see :mod:`vlp.tasks.zeroshot`).

    ``data``: a DataConfig of COCO instances (ShapesWorld format ``instances``) or such a dataset.
    Returns ``top1``, ``top5``, ``mean_class_accuracy``, ``n_images``, ``n_classes``, ``class_names``,
    ``templates`` and ``chance`` (``top1``, ``top5``, ``majority``).
    """
    config = data if isinstance(data, DataConfig) else model_data_config(model)
    dataset = build_eval_dataset(data, split, tokenizer) if isinstance(data, DataConfig) else data
    templates = resolve_templates(templates)
    features, labels, names = labelled_features(model, dataset, by, objects, class_names, config.root,
                                                "embed", batch_size, num_workers)  # fmt: skip
    with torch.no_grad():
        classes = class_embeddings(model, tokenizer, names, templates, config.max_text_len).float().cpu()
    scores = zero_shot_scores(features, classes, labels, float(logit_scale(model).detach()))
    return {**scores, "class_names": names, "templates": templates}
