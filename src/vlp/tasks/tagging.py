"""Multi-label image tagging: which of the C object categories appear in an image (COCO instances).

The image tower alone is trained and evaluated: its tokens are pooled the way the model's
``image_pool`` says (or the task's ``pool``: ``first`` / ``max`` / ``mean``), *before* any
dual-encoder projection, and the ``tagging`` head (``Linear(W, C)``, :mod:`vlp.models.heads`) gives
one logit per category. The loss is binary cross-entropy against the multi-hot targets of the
categories present, averaged over images and categories. Text parts and the fusion module are
never run, so only the tower and the head get gradients. This is both a downstream evaluation
(COCO multi-label classification, mAP) and a supervised warm start of the tower before
vision-language pretraining, as ALBEF's ViT starts from ImageNet-supervised weights.

Targets come from each sample's ``meta["labels"]`` (contiguous category indices); objects that a
crop removed from view (``meta["box_keep"]`` False) are absent. ``min_area`` (pixels of the model
input, ``data.image_size`` squared) *ignores* smaller objects: a category whose only objects in an
image are smaller is left out of the loss and the metrics for that image (neither present nor
absent), since calling a visible object absent would be a wrong label.

Evaluation: mAP (mean over categories of the non-interpolated average precision,
:func:`average_precision`), per-label accuracy and exact-match ratio at probability threshold 0.5,
in percent. Categories without a positive in the split have no AP; they are skipped and named.
``chance``: a constant-score predictor's mAP (= mean prevalence, ties being one block) and the
per-label accuracy / exact match of always answering each label's majority value.

Predict: :func:`predict` ``(model, images) -> [[(class name, probability), ...] per image]``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from vlp.config import ConfigError, from_dict
from vlp.data.batch import Batch
from vlp.metrics.ranking import average_precision
from vlp.objectives.base import logs_to_floats

HEAD = "tagging"
FORMAT_HINT = "COCO instances (ShapesWorld: data.options.format: instances)"


@dataclass
class TaggingTask:
    """The ``task:`` section of a tagging recipe."""

    type: str = "tagging"
    pool: Literal["auto", "first", "max", "mean"] = "auto"  # auto = the model's image_pool
    min_area: float = 0.0  # objects below this many pixels of the model input are ignored
    # written by build_finetuning: the category names the head's outputs stand for, in label order
    class_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.min_area >= 0:  # also rejects NaN
            raise ConfigError(f"task.min_area: expected a number of pixels >= 0, got {self.min_area}")


# ----------------------------------------------------------------------------- metrics


def tagging_scores(
    probs: torch.Tensor,
    targets: torch.Tensor,
    valid: torch.Tensor | None = None,
    class_names: Sequence[str] | None = None,
    threshold: float = 0.5,
) -> dict[str, Any]:
    """mAP, per-label accuracy, exact match and their chance levels, in percent.

    ``probs (N, C)`` scores (probabilities for the threshold), ``targets (N, C)`` bool, ``valid
    (N, C)`` bool: which (image, category) pairs count (default all). AP and the majority value of
    a category use its valid rows only; an image is an exact match when every valid label is right.
    """
    targets = targets.bool().cpu()
    probs = probs.detach().double().cpu()
    valid = torch.ones_like(targets) if valid is None else valid.bool().cpu()
    if probs.shape != targets.shape or valid.shape != targets.shape or probs.dim() != 2 or probs.shape[0] == 0:
        raise ValueError(
            f"probs {tuple(probs.shape)}, targets {tuple(targets.shape)}, valid {tuple(valid.shape)}: "
            "expected equal non-empty (N, C)"
        )
    names = list(class_names) if class_names is not None else [str(c) for c in range(targets.shape[1])]
    aps, prevalence, skipped = {}, [], []
    for c, name in enumerate(names):
        rows = valid[:, c]
        if not bool(targets[rows, c].any()):
            skipped.append(name)
            continue
        aps[name] = 100.0 * average_precision(probs[rows, c], targets[rows, c])
        prevalence.append(targets[rows, c].double().mean().item())
    correct = ((probs > threshold) == targets) | ~valid
    positives, counted = (targets & valid).sum(0), valid.sum(0)
    majority = positives * 2 > counted  # ties: answer "absent"
    majority_right = ((targets == majority[None]) | ~valid).all(1)
    total = max(int(counted.sum()), 1)
    return {
        "map": sum(aps.values()) / len(aps) if aps else float("nan"),
        "tag_acc": 100.0 * ((correct & valid).sum().item()) / total,
        "exact_match": 100.0 * correct.all(1).double().mean().item(),
        "n_images": int(targets.shape[0]),
        "n_classes": int(targets.shape[1]),
        "n_scored_classes": len(aps),
        "ap": aps,
        "skipped_classes": skipped,
        "chance": {
            "map": 100.0 * sum(prevalence) / len(prevalence) if prevalence else float("nan"),
            "tag_acc": 100.0 * torch.maximum(positives, counted - positives).sum().item() / total,
            "exact_match": 100.0 * majority_right.double().mean().item(),
        },
    }


# ----------------------------------------------------------------------------- targets, head, logits


def batch_targets(
    batch: Batch, num_classes: int, min_area: float = 0.0, image_size: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(targets (B, C) float multi-hot, valid (B, C) bool)`` of a batch of COCO-instances samples.

    Objects with ``meta["box_keep"]`` False (cropped out of view) are absent. With ``min_area > 0``
    a category is invalid in an image when all its kept objects there cover fewer than ``min_area``
    pixels of the ``image_size`` x ``image_size`` input (read from ``batch.region_boxes``, the
    normalized boxes of the kept objects, in order).
    """
    targets = torch.zeros(len(batch.meta), num_classes)
    small = torch.zeros(len(batch.meta), num_classes, dtype=torch.bool)
    for i, meta in enumerate(batch.meta):
        if "labels" not in meta:
            raise ConfigError(f"tagging: sample {meta.get('image', i)} has no labels; the data must be {FORMAT_HINT}")
        labels = list(meta["labels"] or [])
        keep = meta.get("box_keep") or [True] * len(labels)
        if len(keep) != len(labels):
            raise ConfigError(f"tagging: {meta.get('image', i)}: {len(labels)} labels but {len(keep)} box_keep flags")
        kept = [int(c) for c, k in zip(labels, keep) if k]
        bad = [c for c in kept if not 0 <= c < num_classes]
        if bad:
            raise ConfigError(f"tagging: {meta.get('image', i)}: label {bad[0]} is outside the {num_classes} classes")
        areas = [float("inf")] * len(kept)
        if min_area > 0 and kept:
            if batch.region_boxes is None or batch.region_boxes.shape[1] < len(kept):
                raise ConfigError(f"tagging min_area: {meta.get('image', i)}: the batch has no boxes of its objects")
            boxes = batch.region_boxes[i, : len(kept)].float().cpu()
            areas = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) * image_size**2).tolist()
        for c, area in zip(kept, areas):
            if area >= min_area:
                targets[i, c] = 1.0
            else:
                small[i, c] = True
    return targets, ~(small & (targets == 0))


def head_options(model: Any) -> Any:
    """The ``tagging`` head's options (:class:`~vlp.models.heads.TaggingHeadConfig`); error when it has none."""
    from vlp.models.heads import TaggingHeadConfig

    if HEAD not in getattr(model, "heads", {}) or HEAD not in model.cfg.heads:
        raise ConfigError("tagging: the model has no tagging head (fine-tune it with task type tagging first)")
    return from_dict(TaggingHeadConfig, model.cfg.heads[HEAD], "model.heads.tagging")


def check_tower(model: Any) -> None:
    """The task needs a model whose ``model.vision`` is the whole image tower."""
    if getattr(model, "vision", None) is None:
        raise ConfigError("tagging: the model has no image tower (model.vision)")
    if getattr(model, "towers_in_fusion", False):
        raise ConfigError("tagging: a MoME model's image tower runs inside its fusion module, not model.vision")


def ensure_tagging_head(model: Any, class_names: Sequence[str], pool: str = "auto") -> None:
    """Give ``model`` a ``tagging`` head for ``class_names`` pooled by ``pool`` (a fresh one unless it
    already fits); the model config is updated too, so the saved recipe rebuilds the same head."""
    from vlp.models.heads import HeadContext, build_heads

    check_tower(model)
    options = {"num_classes": len(class_names), "pool": pool, "class_names": list(class_names)}
    if pool == "first" and getattr(model.vision, "num_prefix_tokens", 0) == 0:
        raise ConfigError("task.pool: first pools a [CLS] token, which this image tower has not; use max or mean")
    if HEAD in model.heads and HEAD in model.cfg.heads:  # e.g. a tagging model tuned further: keep its head
        current = head_options(model)
        same = (current.num_classes, current.pool) == (len(class_names), pool)
        if same and current.class_names in ([], options["class_names"]):
            model.cfg.heads[HEAD] = options
            return
    device = next(model.parameters()).device
    model.heads[HEAD] = build_heads({HEAD: options}, HeadContext(vision_dim=model.vision.dim))[HEAD].to(device)
    model.cfg.heads[HEAD] = options


def tag_logits(model: Any, batch_or_images: Batch | torch.Tensor, pool: str | None = None) -> torch.Tensor:
    """``(B, C)`` category logits: image tower -> pooled tokens (the head's ``pool``) -> ``tagging`` head."""
    pool = pool or head_options(model).pool
    return model.heads[HEAD](model.pool_image_tokens(model.image_tokens(batch_or_images), pool))


class TaggingClassifier(nn.Module):
    """Fine-tuning module: ``forward(batch) -> (loss, logs)``; the mean BCE of the valid labels.

    Logs ``tag_acc`` (per-label accuracy at probability 0.5) and ``positives`` (share of present labels).
    """

    def __init__(self, model: nn.Module, min_area: float = 0.0, image_size: int = 0) -> None:
        super().__init__()
        options = head_options(model)
        self.model, self.pool, self.num_classes = model, options.pool, options.num_classes
        self.min_area, self.image_size = min_area, image_size

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        if batch.images is None and batch.region_features is None:
            raise ConfigError(f"tagging: the batch has no images; the data must be {FORMAT_HINT}")
        logits = tag_logits(self.model, batch, self.pool).float()
        targets, valid = batch_targets(batch, self.num_classes, self.min_area, self.image_size)
        targets, valid = targets.to(logits.device), valid.to(logits.device)
        if not bool(valid.any()):
            return logits.sum() * 0.0, {"tag_acc": 0.0, "positives": 0.0}
        loss = F.binary_cross_entropy_with_logits(logits[valid], targets[valid])
        with torch.no_grad():
            acc = ((logits[valid] > 0) == (targets[valid] > 0.5)).float().mean()  # logit > 0 <=> probability > 0.5
        return loss, logs_to_floats({"tag_acc": acc, "positives": targets[valid].mean()})


def dataset_categories(dataset: Any, where: str = "data") -> list[str]:
    """The category names of a COCO-instances dataset, in label order."""
    index = getattr(dataset, "index", None)
    if index is None or "categories" not in getattr(index, "extras", {}):
        raise ConfigError(f"{where}: tagging reads {FORMAT_HINT}; this data has no categories")
    return list(index.extras["categories"])


def build_finetuning(
    task: dict[str, Any], recipe: Any, model: Any, tokenizer: Any, *, rank: int = 0, world_size: int = 1
) -> tuple[Any, Any]:
    """``(TaggingClassifier, COCO-instances train loader)``; records ``class_names`` in the task."""
    from vlp.data import build_loader

    opts = from_dict(TaggingTask, task, "task")
    check_tower(model)
    loader = build_loader(
        recipe.data, "train", tokenizer, recipe.train.batch_size, num_workers=recipe.train.num_workers,
        rank=rank, world_size=world_size, pin_memory=torch.cuda.is_available(),
    )  # fmt: skip
    names = dataset_categories(loader.dataset)
    if opts.class_names and opts.class_names != names:
        raise ConfigError(f"task.class_names: {opts.class_names} differ from the data's categories {names}; remove it")
    ensure_tagging_head(model, names, opts.pool)
    recipe.model.heads[HEAD] = dict(model.cfg.heads[HEAD])  # the run's saved recipe rebuilds the head
    task["class_names"] = names
    return TaggingClassifier(model, opts.min_area, recipe.data.image_size), loader


# ----------------------------------------------------------------------------- evaluate and predict


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
    from vlp.data.config import DataConfig
    from vlp.tasks.common import build_eval_dataset, iterate_batches, model_data_config

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
    scores = tagging_scores(torch.cat(probs), torch.cat(targets), torch.cat(valid), names, threshold)
    return {**scores, "class_names": names, "threshold": threshold}


def predict(
    model: Any, images: list[Any], *, threshold: float = 0.5, batch_size: int = 64
) -> list[list[tuple[str, float]]]:
    """For each image (PIL image or path): the ``(class name, probability)`` pairs above ``threshold``,
    most probable first. Class names come from the head (``model.heads.tagging.class_names``)."""
    from PIL import Image

    from vlp.tasks.common import image_batch

    if isinstance(images, (str, Path, Image.Image)):
        raise TypeError("images: expected a list of PIL images or paths, got a single image; wrap it in a list")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold: expected a probability in [0, 1], got {threshold}")
    options = head_options(model)
    if not images:
        raise ValueError("images: got an empty list")
    names = options.class_names or [str(c) for c in range(options.num_classes)]
    device = next(model.parameters()).device
    out: list[list[tuple[str, float]]] = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(images), batch_size):
            batch = image_batch(model, images[start : start + batch_size]).to(device)
            with torch.no_grad():
                probs = torch.sigmoid(tag_logits(model, batch, options.pool).float()).cpu()
            for row in probs.tolist():
                found = sorted(((names[c], p) for c, p in enumerate(row) if p > threshold), key=lambda x: -x[1])
                out.append(found)
    finally:
        model.train(was_training)
    return out


# ----------------------------------------------------------------------------- vlp eval tagging


def _run_eval(args: argparse.Namespace) -> int:
    from vlp.tasks.common import finish_eval, prepare_eval

    setup = prepare_eval(args, "instances")
    task = setup.loaded.task
    min_area = args.min_area if args.min_area is not None else float(task.get("min_area", 0.0))
    if not min_area >= 0:
        raise ConfigError(f"--min-area: expected a number of pixels >= 0, got {min_area}")
    if not 0.0 <= args.threshold <= 1.0:
        raise ConfigError(f"--threshold: expected a probability in [0, 1], got {args.threshold}")
    metrics = evaluate(
        setup.loaded.model, setup.loaded.tokenizer, setup.data, split=args.split, min_area=min_area,
        threshold=args.threshold, batch_size=args.batch_size, num_workers=args.workers,
    )  # fmt: skip
    chance = metrics.pop("chance")
    settings = {"min_area": min_area, "threshold": args.threshold, "pool": head_options(setup.loaded.model).pool,
                "class_names": metrics["class_names"]}  # fmt: skip
    table = {k: metrics[k] for k in ("map", "tag_acc", "exact_match", "n_images", "n_scored_classes")}
    return finish_eval(args, "tagging", metrics, setup, chance, settings, table_metrics=table)


def register_eval(subparsers: argparse._SubParsersAction) -> None:
    """``vlp eval tagging``."""
    from vlp.tasks.common import add_eval_arguments

    parser = subparsers.add_parser(
        "tagging", help="multi-label image tagging (which categories appear): mAP, per-label accuracy",
        description="Multi-label tagging of COCO-instances images (ShapesWorld: which shapes appear) with the "
        "model's tagging head on its pooled image tower: mAP, per-label accuracy and exact match.",
    )  # fmt: skip
    add_eval_arguments(parser)
    parser.add_argument("--min-area", type=float, default=None, help="ignore objects below this many pixels of "
                        "the model input (default: the fine-tuning task's, else 0)")  # fmt: skip
    parser.add_argument("--threshold", type=float, default=0.5, help="probability above which a tag is predicted")
    parser.set_defaults(run=_run_eval)


__all__ = [
    "TaggingClassifier",
    "TaggingTask",
    "batch_targets",
    "build_finetuning",
    "dataset_categories",
    "ensure_tagging_head",
    "evaluate",
    "head_options",
    "predict",
    "register_eval",
    "tag_logits",
    "tagging_scores",
]
