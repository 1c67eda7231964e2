"""Zero-shot image classification with a dual encoder (CLIP): prompt templates and template ensembling.

Each class name is put into every prompt template ("a photo of a {}."); the text embeddings of
one class are L2-normalized, averaged over templates and renormalized (CLIP's ensembling), and an
image is scored by ``exp(logit_scale) * image_embed @ class_embed`` (softmax = class probabilities).
Metrics: top-1 and top-5 accuracy (top-k with ``k = min(5, classes)``) and mean per-class
accuracy, in percent; ``chance``: uniform guessing (``k / C``) and always answering the most
frequent class.

Labelled images come from COCO instances (ShapesWorld: ``options.format: instances``): the label
of an image is its main object (``objects: largest``, the biggest box) or the image is used only
when it holds exactly one object (``objects: single``). ``by`` picks what is classified: the
``shape`` (the COCO category), the ``color`` (the ``attributes.color`` ShapesWorld writes) or the
pair (``color_shape``, class names like "red circle"). Colours are ShapesWorld's vocabulary
(``meta.json``) when the data root has one, else the colours seen in the data.

Fine-tuning (``vlp finetune zeroshot-clip-tiny.yaml``) trains both towers contrastively against
the prompts of every class (one random template per class and step, as FLYP does): cross-entropy
of the image-to-class-prompt logits. Classes without training images (e.g. ShapesWorld's held-out
colour-shape pairs) still act as negatives, so the held-out split tests composition. The linear
probe and few-shot protocols are in :mod:`vlp.tasks.probe`.
Predict: :func:`classify` ``(model, tok, images, class_names, templates) -> (labels, probs)``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from vlp.config import ConfigError, from_dict
from vlp.data.batch import Batch
from vlp.objectives.base import logs_to_floats
from vlp.objectives.itc import MAX_LOGIT_SCALE

# Named template sets. "clip7" is the 7-template subset CLIP's authors found best for ImageNet.
TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "photo": ("a photo of a {}.",),
    "clip7": ("itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
              "a {} in a video game.", "art of the {}.", "a photo of the small {}."),
    "shapes": ("a {} shape.", "a picture of a {}.", "a photo of a {}.", "there is a {}.", "a {}."),
}  # fmt: skip
BY = ("shape", "color", "color_shape")


def resolve_templates(templates: str | Sequence[str]) -> list[str]:
    """A template-set name (``photo``, ``clip7``, ``shapes``), ``;``-separated templates, or a list.

    Every template must hold ``{}`` exactly once (where the class name goes).
    """
    if isinstance(templates, str):
        templates = TEMPLATE_SETS.get(templates) or [t.strip() for t in templates.split(";") if t.strip()]
    out = list(templates)
    if not out:
        raise ConfigError("templates: got none; pass a set name (photo, clip7, shapes) or templates with '{}'")
    for t in out:
        if not isinstance(t, str) or t.count("{}") != 1:
            raise ConfigError(
                f"templates: {t!r} must contain '{{}}' exactly once (or name a set: {', '.join(TEMPLATE_SETS)})"
            )
    return out


def ensemble(text_embeds: torch.Tensor) -> torch.Tensor:
    """``(C, T, E)`` per-template text embeddings -> ``(C, E)``: normalize, mean over templates, renormalize."""
    return F.normalize(F.normalize(text_embeds, dim=-1).mean(dim=1), dim=-1)


def encode_texts(model: Any, tokenizer: Any, texts: list[str], max_len: int, batch_size: int = 256) -> torch.Tensor:
    """``(N, E)`` normalized text embeddings of ``texts`` (gradients flow when enabled)."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(texts), batch_size):
        tok = tokenizer(texts[start : start + batch_size], max_length=max_len)
        out.append(model.encode_text(tok.input_ids.to(device), tok.attention_mask.bool().to(device),
                                     tok.token_type_ids.to(device)))  # fmt: skip
    return torch.cat(out)


def class_embeddings(
    model: Any, tokenizer: Any, class_names: Sequence[str], templates: str | Sequence[str], max_len: int = 40
) -> torch.Tensor:
    """``(C, E)`` zero-shot classifier weights: the template-ensembled text embedding of each class."""
    from vlp.tasks.common import has_dual

    if not has_dual(model):
        raise ConfigError("zero-shot classification needs a dual-encoder side (model.embed_dim > 0, e.g. CLIP)")
    templates = resolve_templates(templates)
    names = list(class_names)
    if not names:
        raise ValueError("class_names: got an empty list")
    prompts = [t.format(name) for name in names for t in templates]
    embeds = encode_texts(model, tokenizer, prompts, max_len)
    return ensemble(embeds.view(len(names), len(templates), -1))


def logit_scale(model: Any) -> torch.Tensor:
    return model.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """``{"top1": .., "top5": ..}`` in percent; ``k`` is capped at the number of classes.

    logits ``(N, C)``, labels ``(N,)``. Ties count against the label (a rank counts the classes
    scoring strictly higher), so a constant classifier is not credited with every class.
    """
    if logits.shape[0] != labels.shape[0] or logits.shape[0] == 0:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} must be non-empty and match")
    own = logits.gather(1, labels[:, None])
    rank = (logits > own).sum(1) + (logits == own).sum(1) - 1  # ties are placed ahead of the label
    return {f"top{k}": 100.0 * (rank < min(k, logits.shape[1])).double().mean().item() for k in ks}


def mean_class_accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over the classes present in ``labels`` of their top-1 accuracy (percent)."""
    per = [(pred[labels == c] == c).double().mean().item() for c in labels.unique().tolist()]
    return 100.0 * sum(per) / len(per)


# ----------------------------------------------------------------------------- labelled images


def dataset_colors(root: str | Path | None, records: Sequence[dict[str, Any]]) -> list[str]:
    """ShapesWorld's colour vocabulary (``meta.json``) when ``root`` has one, else the colours seen."""
    meta = Path(root) / "meta.json" if root else None
    if meta is not None and meta.is_file():
        colors = json.loads(meta.read_text(encoding="utf-8")).get("colors")
        if colors:
            return list(colors)
    seen = {a.get("color") for r in records for a in r.get("attributes") or [] if isinstance(a, dict)}
    return sorted(c for c in seen if isinstance(c, str))


def class_vocabulary(by: str, categories: Sequence[str], colors: Sequence[str]) -> list[str]:
    """The class names of ``by``: shapes (categories), colours, or every "colour shape" pair."""
    if by == "shape":
        return list(categories)
    if by == "color":
        return list(colors)
    if by == "color_shape":
        return [f"{c} {s}" for c in colors for s in categories]
    raise ConfigError(f"by: {by!r} is not one of {', '.join(BY)}")


def record_label(record: dict[str, Any], by: str, objects: str, categories: Sequence[str]) -> str | None:
    """The class name of one COCO-instances image record, or None when it is not used.

    ``objects``: ``largest`` labels the image by its biggest box, ``single`` keeps only
    one-object images.
    """
    boxes, labels = record.get("boxes") or [], record.get("labels") or []
    attributes = record.get("attributes") or [None] * len(boxes)
    if not boxes or (objects == "single" and len(boxes) != 1):
        return None
    main = max(range(len(boxes)), key=lambda i: (boxes[i][2] - boxes[i][0]) * (boxes[i][3] - boxes[i][1]))
    shape = categories[labels[main]]
    color = (attributes[main] or {}).get("color") if by != "shape" else None
    if by != "shape" and not isinstance(color, str):
        raise ConfigError(f"by {by}: {record.get('image')}: the annotation has no attributes.color (ShapesWorld has)")
    return shape if by == "shape" else color if by == "color" else f"{color} {shape}"


def labelled_subset(
    dataset: Any, by: str, objects: str = "largest", class_names: Sequence[str] | None = None, root: Any = None
) -> tuple[list[int], list[int], list[str]]:
    """``(dataset indices, label indices, class names)`` of the images of a COCO-instances dataset.

    ``class_names`` (e.g. those a model was fine-tuned with) fixes the label order; images whose
    label is not among them are an error, since they could never be classified correctly.
    """
    if objects not in ("largest", "single"):
        raise ConfigError(f"objects: {objects!r} is not one of largest, single")
    index = getattr(dataset, "index", None)
    if index is None or "categories" not in index.extras:
        raise ConfigError("zero-shot data must be COCO instances (ShapesWorld: --format shapesworld reads them)")
    records, categories = index.records, index.extras["categories"]
    names = list(class_names) if class_names else class_vocabulary(by, categories, dataset_colors(root, records))
    position = {n: i for i, n in enumerate(names)}
    indices, labels = [], []
    for i, record in enumerate(records):
        name = record_label(record, by, objects, categories)
        if name is None:
            continue
        if name not in position:
            raise ConfigError(f"{record.get('image')}: label {name!r} is not among the {len(names)} class names")
        indices.append(i)
        labels.append(position[name])
    if not indices:
        raise ConfigError(f"zero-shot: no image of the data qualifies (objects: {objects})")
    return indices, labels, names


def encode_images(model: Any, dataset: Any, indices: list[int], batch_size: int = 64,
                  kind: str = "embed", num_workers: int = 0) -> tuple[torch.Tensor, list[int]]:  # fmt: skip
    """``((N, D) features on CPU, the N dataset indices read)`` of ``dataset[indices]``, in order;
    unreadable images are skipped (and logged by the data pipeline).

    ``embed``: the normalized dual-encoder embedding; ``pooled``: the visual tokens pooled the
    way the model pools them (its ``image_pool``: [CLS], max or mean), before any projection.
    """
    from torch.utils.data import Subset

    from vlp.tasks.common import has_dual, iterate_batches

    if kind not in ("embed", "pooled"):
        raise ConfigError(f"features: {kind!r} is not one of embed, pooled")
    if kind == "embed" and not has_dual(model):
        raise ConfigError("features embed: the model has no dual-encoder side; use features pooled")
    device = next(model.parameters()).device
    out, seen = [], []
    was_training = model.training
    model.eval()
    try:
        for batch in iterate_batches(Subset(dataset, indices), None, batch_size, num_workers=num_workers):
            with torch.no_grad():
                if kind == "embed":
                    out.append(model.encode_image(batch.to(device)).float().cpu())
                else:
                    out.append(model.pool_image_tokens(model.image_tokens(batch.to(device))).float().cpu())
            seen.extend(m["index"] for m in batch.meta)
    finally:
        model.train(was_training)
    if not out:
        raise ConfigError("zero-shot: none of the images could be read")
    return torch.cat(out), seen


def labelled_features(model: Any, dataset: Any, by: str, objects: str = "largest", class_names: Any = None,
                      root: Any = None, kind: str = "embed", batch_size: int = 64,
                      num_workers: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[str]]:  # fmt: skip
    """``(features (N, D), labels (N,), class names)`` of the labelled images of ``dataset``."""
    indices, labels, names = labelled_subset(dataset, by, objects, class_names, root)
    features, seen = encode_images(model, dataset, indices, batch_size, kind, num_workers)
    label_of = dict(zip(indices, labels))
    return features, torch.tensor([label_of[i] for i in seen], dtype=torch.long), names


# ----------------------------------------------------------------------------- evaluate and predict


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
    """Zero-shot accuracy of a dual encoder on labelled images (see the module docstring).

    ``data``: a DataConfig of COCO instances (ShapesWorld format ``instances``) or such a dataset.
    Returns ``top1``, ``top5``, ``mean_class_accuracy``, ``n_images``, ``n_classes``, ``class_names``,
    ``templates`` and ``chance`` (``top1``, ``top5``, ``majority``).
    """
    from vlp.data.config import DataConfig
    from vlp.tasks.common import build_eval_dataset, model_data_config

    config = data if isinstance(data, DataConfig) else model_data_config(model)
    dataset = build_eval_dataset(data, split, tokenizer) if isinstance(data, DataConfig) else data
    templates = resolve_templates(templates)
    features, labels, names = labelled_features(model, dataset, by, objects, class_names, config.root,
                                                "embed", batch_size, num_workers)  # fmt: skip
    with torch.no_grad():
        classes = class_embeddings(model, tokenizer, names, templates, config.max_text_len).float().cpu()
    scores = zero_shot_scores(features, classes, labels, float(logit_scale(model).detach()))
    return {**scores, "class_names": names, "templates": templates}


def classify(
    model: Any,
    tokenizer: Any,
    images: list[Any],
    class_names: Sequence[str],
    templates: str | Sequence[str] = ("a photo of a {}.",),
) -> tuple[list[str], torch.Tensor]:
    """Zero-shot labels and ``(N, C)`` class probabilities of ``images`` (PIL images or paths)."""
    from vlp.tasks.common import image_batch, model_data_config

    names = list(class_names)
    if isinstance(class_names, str) or not names or not all(isinstance(n, str) for n in names):
        raise TypeError("class_names: expected a non-empty list of strings")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            classes = class_embeddings(model, tokenizer, names, templates, model_data_config(model).max_text_len)
            image = model.encode_image(image_batch(model, images).to(device))
            probs = (logit_scale(model) * image @ classes.T).float().softmax(dim=-1).cpu()
    finally:
        model.train(was_training)
    return [names[i] for i in probs.argmax(1).tolist()], probs


def predict(model: Any, tokenizer: Any, images: list[Any], texts: list[str], **kwargs: Any) -> list[str]:
    """The common predict signature: ``texts`` are the class names; returns one label per image."""
    return classify(model, tokenizer, images, texts, **kwargs)[0]


# ----------------------------------------------------------------------------- fine-tuning


@dataclass
class ZeroShotTask:
    """The ``task:`` section of a zero-shot classification recipe."""

    type: str = "zeroshot"
    by: Literal["shape", "color", "color_shape"] = "shape"
    templates: list[str] | str = "photo"
    objects: Literal["largest", "single"] = "largest"
    # written by build_finetuning: the classes the prompts name, in label order
    class_names: list[str] = field(default_factory=list)


def batch_labels(batch: Batch, by: str, objects: str, categories: Sequence[str], names: Sequence[str]) -> torch.Tensor:
    """``(B,)`` class indices of a batch of COCO-instances samples; -100 (ignored) where unusable."""
    position = {n: i for i, n in enumerate(names)}
    out = []
    for i, meta in enumerate(batch.meta):
        labels, attributes = list(meta.get("labels") or []), list(meta.get("attributes") or [])
        keep = meta.get("box_keep") or [True] * len(labels)
        labels = [x for x, k in zip(labels, keep) if k]
        attributes = [x for x, k in zip(attributes or [None] * len(keep), keep) if k]
        boxes = batch.region_boxes[i, : len(labels)].tolist() if batch.region_boxes is not None else []
        name = record_label({"boxes": boxes, "labels": labels, "attributes": attributes, "image": meta.get("image")},
                            by, objects, categories)  # fmt: skip
        out.append(position.get(name, -100) if name is not None else -100)
    return torch.tensor(out, dtype=torch.long)


class PromptContrastive(nn.Module):
    """Fine-tuning module: ``forward(batch) -> (loss, logs)``, cross-entropy of the image embedding
    against the prompt embeddings of every class (one random template per class and step).

    Logs ``acc`` (top-1 of those logits) and ``used`` (share of the batch with a label).
    """

    def __init__(self, model: nn.Module, tokenizer: Any, class_names: Sequence[str], templates: Sequence[str],
                 by: str, objects: str, categories: Sequence[str], max_len: int, seed: int = 0) -> None:  # fmt: skip
        super().__init__()
        from vlp.tasks.common import has_dual

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
    from vlp.data import build_loader

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


# ----------------------------------------------------------------------------- vlp eval zeroshot


__all__ = [
    "BY",
    "TEMPLATE_SETS",
    "PromptContrastive",
    "ZeroShotTask",
    "batch_labels",
    "build_finetuning",
    "class_embeddings",
    "class_vocabulary",
    "classify",
    "encode_images",
    "ensemble",
    "evaluate",
    "labelled_features",
    "labelled_subset",
    "predict",
    "record_label",
    "resolve_templates",
    "topk_accuracy",
    "zero_shot_scores",
]
