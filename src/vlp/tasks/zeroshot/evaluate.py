"""Zero-shot evaluation: top-1 / top-5, mean per-class recall and the confusion matrix of the class
embeddings on labelled images, with chance levels; the confusion matrix drawn as a PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from vlp.config import ConfigError
from vlp.data.config import DataConfig
from vlp.metrics.classification import (
    confusion_matrix,
    mean_per_class_recall,
    per_class_recall,
    topk_accuracy,
)
from vlp.objectives.itc import MAX_LOGIT_SCALE
from vlp.tasks.common import build_eval_dataset, model_data_config
from vlp.tasks.zeroshot.head import class_embeddings, logit_scale, resolve_templates
from vlp.tasks.zeroshot.labels import labelled_features


def zero_shot_scores(
    image_embeds: torch.Tensor, class_embeds: torch.Tensor, labels: torch.Tensor, scale: float = MAX_LOGIT_SCALE
) -> dict[str, Any]:
    """Top-1/top-5/mean per-class accuracy and chance levels of ``(N, E)`` images vs ``(C, E)`` classes.

    Also ``mean_per_class_recall`` (the same number as ``mean_class_accuracy``, under
    clip_benchmark's name), ``per_class_recall`` (percent, None for a class without images) and
    ``confusion_matrix`` (``(C, C)`` counts, row = true class, column = predicted).
    """
    logits = scale * image_embeds @ class_embeds.T
    num = class_embeds.shape[0]
    matrix = confusion_matrix(logits.argmax(1), labels, num)
    mean_recall = mean_per_class_recall(matrix)
    return {
        **topk_accuracy(logits, labels),
        "mean_class_accuracy": mean_recall,
        "mean_per_class_recall": mean_recall,
        "per_class_recall": per_class_recall(matrix),
        "confusion_matrix": matrix.tolist(),
        "n_images": int(labels.numel()),
        "n_classes": num,
        "chance": {
            "top1": 100.0 / num,
            "top5": 100.0 * min(5, num) / num,
            "majority": 100.0 * matrix.sum(1).max().item() / labels.numel(),
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

    ``data``: a DataConfig of COCO instances (ShapesWorld format ``instances``) or of an image folder
    (``image_folder``: one sub-folder per class; ``by`` and ``objects`` do not apply), or such a
    dataset. Returns the scores of :func:`zero_shot_scores` (``top1``, ``top5``,
    ``mean_class_accuracy``, ``mean_per_class_recall``, ``per_class_recall``, ``confusion_matrix``,
    ``n_images``, ``n_classes``, ``chance``: ``top1``, ``top5``, ``majority``), ``class_names``,
    ``templates`` and, for an image folder, ``split_source`` (which images the split holds).
    """
    config = data if isinstance(data, DataConfig) else model_data_config(model)
    dataset = build_eval_dataset(data, split, tokenizer) if isinstance(data, DataConfig) else data
    templates = resolve_templates(templates)
    features, labels, names = labelled_features(model, dataset, by, objects, class_names, config.root,
                                                "embed", batch_size, num_workers)  # fmt: skip
    with torch.no_grad():
        classes = class_embeddings(model, tokenizer, names, templates, config.max_text_len).float().cpu()
    scores = zero_shot_scores(features, classes, labels, float(logit_scale(model).detach()))
    extras = getattr(getattr(dataset, "index", None), "extras", {})
    source = {"split_source": extras["split_source"]} if "split_source" in extras else {}
    return {**scores, "class_names": names, "templates": templates, **source}


def save_confusion_png(matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: str | Path,
                       title: str = "zero-shot confusion matrix") -> Path:  # fmt: skip
    """Draw ``matrix`` (row = true class, column = predicted; rows normalized to recall) as a PNG.

    Needs matplotlib (the ``eval`` extra); class names label the axes up to 40 classes.
    """
    try:  # optional dependency (the eval extra): imported only when a figure is asked for
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ConfigError("the confusion-matrix PNG needs matplotlib: pip install 'vlp[eval]'") from err
    counts = torch.tensor(matrix, dtype=torch.float64)
    rows = counts / counts.sum(1, keepdim=True).clamp(min=1)
    num = len(class_names)
    side = min(4.0 + 0.3 * num, 24.0)
    fig, ax = plt.subplots(figsize=(side, side))
    shown = ax.imshow(rows.numpy(), cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    if num <= 40:  # beyond that the names overlap; the axes keep the class indices
        ax.set_xticks(range(num), labels=list(class_names), rotation=90, fontsize=8)
        ax.set_yticks(range(num), labels=list(class_names), fontsize=8)
        if num <= 15:
            for i in range(num):
                for j in range(num):
                    if counts[i, j]:
                        color = "white" if rows[i, j] > 0.5 else "black"
                        ax.text(j, i, int(counts[i, j]), ha="center", va="center", color=color, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
