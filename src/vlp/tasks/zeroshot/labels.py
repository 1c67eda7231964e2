"""Labelled images of a COCO-instances split (the class of each image is its main object's shape, colour
or both) or of an image folder (the class is the image's class folder), the class vocabulary, and the
frozen image features of the labelled images (zero-shot evaluation and the linear probe read them)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset

from vlp.config import ConfigError
from vlp.data.batch import Batch
from vlp.tasks.common import has_dual, iterate_batches

BY = ("shape", "color", "color_shape")


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
    label is not among them are an error, since they could never be classified correctly. An
    image-folder dataset is labelled by its class folders (:func:`folder_labels`; ``by`` and
    ``objects`` do not apply).
    """
    if objects not in ("largest", "single"):
        raise ConfigError(f"objects: {objects!r} is not one of largest, single")
    index = getattr(dataset, "index", None)
    if index is not None and "classes" in index.extras:
        return folder_labels(index, class_names)
    if index is None or "categories" not in index.extras:
        raise ConfigError(
            "zero-shot data must be COCO instances (ShapesWorld: --format shapesworld reads them) or an image "
            "folder with one sub-folder per class (--format image_folder)"
        )
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


def folder_labels(index: Any, class_names: Sequence[str] | None = None) -> tuple[list[int], list[int], list[str]]:
    """``(record indices, labels, class names)`` of an image-folder index (every image has its folder's class).

    ``class_names`` renames the classes in sorted-folder order (one name per class folder).
    """
    names = list(index.extras["classes"])
    if class_names:
        if len(class_names) != len(names):
            folders = index.extras.get("class_folders", names)
            raise ConfigError(
                f"class names: {len(class_names)} given for {len(names)} class folders "
                f"({', '.join(folders[:5])}{', ...' if len(folders) > 5 else ''}); give one per folder in "
                "sorted-folder order"
            )
        names = list(class_names)
    if not index.records:
        raise ConfigError("zero-shot: the image folder split holds no image")
    return list(range(len(index.records))), [int(r["label"]) for r in index.records], names


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


def encode_images(model: Any, dataset: Any, indices: list[int], batch_size: int = 64,
                  kind: str = "embed", num_workers: int = 0) -> tuple[torch.Tensor, list[int]]:  # fmt: skip
    """``((N, D) features on CPU, the N dataset indices read)`` of ``dataset[indices]``, in order;
    unreadable images are skipped (and logged by the data pipeline).

    ``embed``: the normalized dual-encoder embedding; ``pooled``: the visual tokens pooled the
    way the model pools them (its ``image_pool``: [CLS], max or mean), before any projection.
    """
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
