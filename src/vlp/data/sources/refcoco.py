"""RefCOCO / RefCOCO+ / RefCOCOg as shipped: ``refs(unc).p`` (or ``refs(umd).p``, ``refs(google).p``)
plus ``instances.json``.

The refs file is a Python 2 pickle of a list of ``{"ref_id", "ann_id",
"image_id", "split": "train" | "val" | "test" | "testA" | "testB",
"sentences": [{"raw", "sent", "tokens", "sent_id"}], "category_id",
"file_name", "sent_ids"}``; it is read with :mod:`vlp.data.safe_pickle`, which
refuses anything but plain data, so a crafted file cannot run code. Refs point
at annotation ids of ``instances.json`` (COCO instances of every image), which
gives the target box and the image's file name (the refs' own ``file_name``
names a per-annotation crop that does not exist on disk).

One record per sentence (``per: sentence``, the usual training unit) or per ref
with all its sentences (``per: ref``): ``caption`` = the expression,
``target_box`` = xyxy pixels, ``boxes`` = every annotation of the image (the
candidates for region-based models) and ``target_index`` = the target's
position among them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from vlp.config import ConfigError
from vlp.data.safe_pickle import safe_load
from vlp.data.skipping import Skipped, reject
from vlp.data.sources.coco_instances import image_boxes, load_coco_instances, xywh_to_xyxy
from vlp.data.sources.common import SourceIndex, check_text


def load_refs(path: Path) -> list[dict[str, Any]]:
    try:
        refs = safe_load(path)
    except FileNotFoundError as err:
        raise ConfigError(f"data.paths.refs: {path}: file not found") from err
    if not isinstance(refs, list):
        raise ConfigError(f"{path}: expected a pickled list of refs, got {type(refs).__name__}")
    return refs


def read_refcoco(
    refs: Path,
    instances: Path,
    images_dir: Path,
    split: str,
    per: Literal["sentence", "ref"] = "sentence",
    max_chars: int = 2000,
    strict: bool = False,
) -> SourceIndex:
    """Index the referring expressions of ``split``."""
    coco = load_coco_instances(instances)
    skips: list[Skipped] = []
    records: list[dict[str, Any]] = []
    for i, ref in enumerate(load_refs(refs)):
        if not isinstance(ref, dict) or ref.get("split") != split:
            continue
        source = f"{refs}[{i}] ref_id={ref.get('ref_id')}"
        ann = coco.annotations.get(ref.get("ann_id"))
        image = coco.images.get(ref.get("image_id"))
        box = xywh_to_xyxy(ann.get("bbox")) if ann else None
        if ann is None or image is None or box is None or not isinstance(image.get("file_name"), str):
            skips.append(reject("missing_field", source, "ann_id/image_id not in instances.json or no box", strict))
            continue
        candidates = image_boxes(coco, ref["image_id"], include_crowd=True)
        ids = [c.get("id") for c in candidates]
        base = {
            "image": str(images_dir / image["file_name"]), "image_id": ref["image_id"],
            "width": image.get("width"), "height": image.get("height"),
            "ref_id": ref.get("ref_id"), "ann_id": ref["ann_id"], "category_id": ref.get("category_id"),
            "target_box": box, "boxes": [c["box"] for c in candidates],
            "labels": [coco.label_of[c["category_id"]] for c in candidates],
            "target_index": ids.index(ref["ann_id"]) if ref["ann_id"] in ids else -1,
        }  # fmt: skip
        sentences = ref.get("sentences") if isinstance(ref.get("sentences"), list) else []
        texts = []
        for k, sentence in enumerate(sentences):
            raw = sentence.get("sent", sentence.get("raw")) if isinstance(sentence, dict) else None
            text = check_text(raw, f"{source} sentence {k}", max_chars, strict, "expression")
            if isinstance(text, Skipped):
                skips.append(text)
                continue
            texts.append(text)
            if per == "sentence":
                records.append(base | {"caption": text, "sent_id": sentence.get("sent_id")})
        if not sentences:
            skips.append(reject("missing_field", source, "no sentences", strict))
        if not texts:
            continue
        if per == "ref":
            records.append(base | {"captions": texts})
    index = SourceIndex(records, skips)
    index.extras["categories"] = [str(c.get("name", c["id"])) for c in coco.categories]
    return index
