"""COCO instances (``instances_train2014.json`` and the ``instances.json`` RefCOCO ships).

Layout: ``{"images": [{"id", "file_name", "width", "height"}], "annotations":
[{"id", "image_id", "category_id", "bbox": [x, y, w, h] (pixels), "area",
"iscrowd", "segmentation"}], "categories": [{"id", "name", "supercategory"}]}``.
Extra keys (e.g. ``attributes``) are kept on the annotation. Category ids are
not contiguous in COCO (1..90 for 80 classes); ``labels`` are the contiguous
indices 0..C-1 in increasing category-id order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlp.data.skipping import Skipped, reject
from vlp.data.sources.common import SourceIndex, expect, read_json


@dataclass
class CocoInstances:
    images: dict[Any, dict[str, Any]]  # image id -> image entry
    annotations: dict[Any, dict[str, Any]]  # annotation id -> annotation
    by_image: dict[Any, list[dict[str, Any]]]  # image id -> its annotations, in file order
    categories: list[dict[str, Any]]  # sorted by id; label i = categories[i]
    label_of: dict[Any, int]  # category id -> contiguous label


def xywh_to_xyxy(bbox: Any) -> list[float] | None:
    """COCO [x, y, w, h] -> [x1, y1, x2, y2]; None for a malformed or empty box."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return None
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return None
    if not w > 0 or not h > 0:  # also rejects NaN
        return None
    return [x, y, x + w, y + h]


def load_coco_instances(path: Path, what: str = "instances") -> CocoInstances:
    data = read_json(path, what)
    expect(
        isinstance(data, dict) and isinstance(data.get("images"), list) and isinstance(data.get("annotations"), list),
        path,
        'expected COCO instances: {"images": [...], "annotations": [...], "categories": [...]}',
    )
    images = {im["id"]: im for im in data["images"] if isinstance(im, dict) and "id" in im}
    annotations: dict[Any, dict[str, Any]] = {}
    by_image: dict[Any, list[dict[str, Any]]] = {}
    for ann in data["annotations"]:
        if isinstance(ann, dict) and "image_id" in ann:
            annotations[ann.get("id", len(annotations))] = ann
            by_image.setdefault(ann["image_id"], []).append(ann)
    categories = sorted(
        (c for c in data.get("categories", []) if isinstance(c, dict) and "id" in c), key=lambda c: c["id"]
    )
    label_of = {c["id"]: i for i, c in enumerate(categories)}
    return CocoInstances(images, annotations, by_image, categories, label_of)


def image_boxes(coco: CocoInstances, image_id: Any, include_crowd: bool = False) -> list[dict[str, Any]]:
    """The usable annotations of an image with ``box`` (xyxy pixels) added; empty boxes are dropped."""
    out = []
    for ann in coco.by_image.get(image_id, []):
        if ann.get("iscrowd", 0) and not include_crowd:
            continue
        box = xywh_to_xyxy(ann.get("bbox"))
        if box is not None and ann.get("category_id") in coco.label_of:
            out.append(ann | {"box": box})
    return out


def read_coco_instances(
    instances: Path, images_dir: Path, include_crowd: bool = False, skip_empty: bool = False, strict: bool = False
) -> SourceIndex:
    """One record per image: ``boxes`` (xyxy pixels), ``labels``, ``category_ids`` and ``tags`` (class names)."""
    coco = load_coco_instances(instances)
    names = [str(c.get("name", c["id"])) for c in coco.categories]
    skips: list[Skipped] = []
    records = []
    for image_id, image in coco.images.items():
        if not isinstance(image.get("file_name"), str):
            skips.append(reject("missing_field", f"{instances}[images] id={image_id}", "no file_name", strict))
            continue
        anns = image_boxes(coco, image_id, include_crowd)
        if skip_empty and not anns:
            continue
        labels = [coco.label_of[a["category_id"]] for a in anns]
        records.append({
            "image": str(images_dir / image["file_name"]), "image_id": image_id,
            "width": image.get("width"), "height": image.get("height"),
            "boxes": [a["box"] for a in anns], "labels": labels,
            "category_ids": [a["category_id"] for a in anns], "tags": [names[i] for i in labels],
            "attributes": [a.get("attributes") for a in anns],
        })  # fmt: skip
    index = SourceIndex(records, skips)
    index.extras["categories"] = names
    return index
