"""Tagging evaluation: mAP, per-label accuracy and exact match, with chance levels."""

from __future__ import annotations

from typing import Any

import torch

from vlp.config import ConfigError
from vlp.data.config import DataConfig
from vlp.metrics.multilabel import multilabel_scores
from vlp.tasks.common import build_eval_dataset, iterate_batches, model_data_config
from vlp.tasks.tagging.head import batch_targets, check_tower, dataset_categories, head_options, tag_logits


def evaluate(
    model: Any,
    tokenizer: Any,
    data: Any,
    *,
    split: str = "test",
    min_area: float = 0.0,
    threshold: float = 0.5,
    batch_size: int = 64,
    num_workers: int = 0,
) -> dict[str, Any]:
    """Tagging metrics of a model with a ``tagging`` head (see the module docstring).

    ``data``: a DataConfig of COCO instances (ShapesWorld format ``instances``) or such a dataset.
    Returns ``map``, ``tag_acc``, ``exact_match`` (percent), ``ap`` (per category), ``skipped_classes``,
    ``n_images``, ``n_classes``, ``n_scored_classes``, ``class_names``, ``threshold`` and ``chance``.
    """
    check_tower(model)
    options = head_options(model)
    is_config = isinstance(data, DataConfig)
    dataset = build_eval_dataset(data, split, tokenizer) if is_config else data
    names = dataset_categories(dataset, "--data" if is_config else "data")
    if options.class_names and options.class_names != names:
        raise ConfigError(f"tagging: the data's categories {names} differ from the head's {options.class_names}")
    if len(names) != options.num_classes:
        raise ConfigError(f"tagging: the data has {len(names)} categories but the head {options.num_classes} outputs")
    image_size = (data if is_config else model_data_config(model)).image_size
    device = next(model.parameters()).device
    probs, targets, valid = [], [], []
    was_training = model.training
    model.eval()
    try:
        for batch in iterate_batches(dataset, None, batch_size, num_workers=num_workers):
            with torch.no_grad():
                probs.append(torch.sigmoid(tag_logits(model, batch.to(device), options.pool).float()).cpu())
            target, keep = batch_targets(batch, len(names), min_area, image_size)
            targets.append(target.bool())
            valid.append(keep)
    finally:
        model.train(was_training)
    if not probs:
        raise ConfigError(f"tagging: no image of split {split!r} could be read")
    if not bool((torch.cat(targets) & torch.cat(valid)).any()):
        raise ConfigError(f"tagging: no image of split {split!r} holds an object, so no category can be scored")
    scores = multilabel_scores(torch.cat(probs), torch.cat(targets), torch.cat(valid), names, threshold)
    return {**scores, "class_names": names, "threshold": threshold}
