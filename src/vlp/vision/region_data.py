"""Precomputed detector regions: bottom-up-attention ``.npz`` files and their padding.

One ``.npz`` per image holds the detector's kept boxes and their pooled features.
Tools spell the keys differently; :func:`load_region_npz` accepts the common spellings:

===============  ===============================================  ========
field            keys tried, in order                             needed
===============  ===============================================  ========
features (R, F)  features, x, feats, feature                      yes
boxes (R, 4)     boxes, bbox, bboxes                              yes
image width      image_w, image_width, img_w, width               for pixel boxes
image height     image_h, image_height, img_h, height             for pixel boxes
box count        num_boxes, num_bbox, num_bboxes                  no
class ids (R,)   objects_id, object_ids, objects, class_ids       no
scores (R,)      objects_conf, object_conf, class_scores, scores  no
class probs      cls_prob, cls_probs, class_probs                 no
===============  ===============================================  ========

bottom-up-attention.pytorch nests the class fields in a pickled ``info`` dict; those
are read only with ``allow_pickle=True`` (loading data never unpickles by default).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

FEATURE_KEYS = ("features", "x", "feats", "feature")
BOX_KEYS = ("boxes", "bbox", "bboxes")
WIDTH_KEYS = ("image_w", "image_width", "img_w", "width")
HEIGHT_KEYS = ("image_h", "image_height", "img_h", "height")
COUNT_KEYS = ("num_boxes", "num_bbox", "num_bboxes")
CLASS_ID_KEYS = ("objects_id", "object_ids", "objects", "class_ids")
SCORE_KEYS = ("objects_conf", "object_conf", "class_scores", "scores")
PROB_KEYS = ("cls_prob", "cls_probs", "class_probs")


@dataclass
class RegionFeatures:
    """The regions of one image.

    ``features (R, F)`` float32; ``boxes (R, 4)`` as ``(x1, y1, x2, y2)``, in pixels of an
    ``image_width x image_height`` image (or already in [0, 1] when ``normalized``);
    optional detector outputs ``class_ids (R,)``, ``class_scores (R,)``, ``class_probs (R, C)``.
    """

    features: torch.Tensor
    boxes: torch.Tensor
    image_width: int | None = None
    image_height: int | None = None
    normalized: bool = False
    class_ids: torch.Tensor | None = None
    class_scores: torch.Tensor | None = None
    class_probs: torch.Tensor | None = None
    source: str = ""

    @property
    def num_boxes(self) -> int:
        return self.boxes.shape[0]

    def normalized_boxes(self) -> torch.Tensor:
        """Boxes ``(R, 4)`` divided by the image size, clamped to [0, 1]."""
        if self.normalized:
            return self.boxes.clamp(0.0, 1.0)
        if not self.image_width or not self.image_height:
            raise ValueError(f"{self.source or 'regions'}: pixel boxes need image_width and image_height to normalize")
        scale = self.boxes.new_tensor([self.image_width, self.image_height, self.image_width, self.image_height])
        return (self.boxes / scale).clamp(0.0, 1.0)


def _find(data: Any, keys: tuple[str, ...]) -> str | None:
    return next((k for k in keys if k in data), None)


def _array(data: Any, key: str, path: str) -> np.ndarray:
    value = np.asarray(data[key])
    if value.dtype == object:
        raise ValueError(f"{path}: key {key!r} holds Python objects, expected a numeric array")
    return value


def _scalar(data: Any, keys: tuple[str, ...], path: str) -> int | None:
    key = _find(data, keys)
    return None if key is None else int(_array(data, key, path).reshape(-1)[0])


def load_region_npz(
    path: str | os.PathLike,
    box_format: Literal["auto", "pixels", "normalized"] = "auto",
    allow_pickle: bool = False,
) -> RegionFeatures:
    """Read one image's regions from a bottom-up-attention-style ``.npz``.

    ``box_format="auto"`` treats boxes as normalized when every coordinate is at most
    1 and as pixels otherwise. Pixel boxes need the image size keys. When the file has
    a ``num_boxes`` smaller than its rows (fixed-size padded files), only the first
    ``num_boxes`` rows are kept. Errors name the file and the missing or bad key.
    """
    path = os.fspath(path)
    try:
        archive = np.load(path, allow_pickle=allow_pickle)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{path}: region file not found") from err
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable .npz file ({err})") from err
    data: dict[str, Any] = {}
    pickled: list[str] = []  # object arrays, unreadable without allow_pickle
    with archive:
        files = sorted(archive.files)
        for key in archive.files:
            try:
                data[key] = archive[key]
            except ValueError:
                pickled.append(key)
    if "info" in data and data["info"].dtype == object:
        info = data["info"].item()  # bottom-up-attention.pytorch: a dict of per-box class fields
        if isinstance(info, dict):
            data.update({k: v for k, v in info.items() if k not in data})

    def required(keys: tuple[str, ...], what: str) -> np.ndarray:
        key = _find(data, keys)
        if key is None:
            unreadable = _find(pickled, keys)
            if unreadable is not None:
                raise ValueError(
                    f"{path}: key {unreadable!r} holds pickled objects; pass allow_pickle=True if you trust the file"
                )
            raise KeyError(f"{path}: missing {what}: expected one of the keys {list(keys)}; the file has {files}")
        return _array(data, key, path)

    features = required(FEATURE_KEYS, "region features (R, F)").astype(np.float32)
    boxes = required(BOX_KEYS, "region boxes (R, 4)").astype(np.float32)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{path}: boxes must be (R, 4) x1, y1, x2, y2; got shape {boxes.shape}")
    rows = boxes.shape[0]
    if features.ndim == 2 and features.shape[0] != rows and features.shape[1] == rows:
        features = features.T  # some extractors save (F, R)
    if features.ndim != 2 or features.shape[0] != rows:
        raise ValueError(f"{path}: features of shape {features.shape} do not match {rows} boxes (expected (R, F))")
    count = _scalar(data, COUNT_KEYS, path)
    if count is not None:
        if count > rows or count < 0:
            raise ValueError(f"{path}: num_boxes {count} is outside [0, {rows}] (the file has {rows} boxes)")
        rows = count

    def optional(keys: tuple[str, ...], dtype: Any, ndim: int) -> torch.Tensor | None:
        key = _find(data, keys)
        if key is None:
            return None
        value = _array(data, key, path).astype(dtype)
        if value.ndim != ndim or value.shape[0] < rows:
            raise ValueError(f"{path}: {key!r} of shape {value.shape} does not give one entry per box ({rows})")
        return torch.from_numpy(np.ascontiguousarray(value[:rows]))

    width, height = _scalar(data, WIDTH_KEYS, path), _scalar(data, HEIGHT_KEYS, path)
    if box_format == "auto":
        normalized = bool(rows == 0 or boxes[:rows].max() <= 1.0)
    elif box_format in ("pixels", "normalized"):
        normalized = box_format == "normalized"
    else:
        raise ValueError(f"box_format: expected 'auto', 'pixels' or 'normalized', got {box_format!r}")
    if not normalized and (width is None or height is None):
        missing = list(WIDTH_KEYS if width is None else HEIGHT_KEYS)
        raise KeyError(f"{path}: boxes are in pixels but the image size is missing: expected one of {missing}")
    return RegionFeatures(
        features=torch.from_numpy(np.ascontiguousarray(features[:rows])),
        boxes=torch.from_numpy(np.ascontiguousarray(boxes[:rows])),
        image_width=width,
        image_height=height,
        normalized=normalized,
        class_ids=optional(CLASS_ID_KEYS, np.int64, 1),
        class_scores=optional(SCORE_KEYS, np.float32, 1),
        class_probs=optional(PROB_KEYS, np.float32, 2),
        source=path,
    )


def pad_regions(items: list[RegionFeatures], max_regions: int | None = None) -> dict[str, torch.Tensor]:
    """Pad the regions of a batch of images to one length: keyword arguments for ``Batch``.

    Returns ``region_features (B, R, F)``, ``region_boxes (B, R, 4)`` normalized,
    ``region_mask (B, R)`` (``True`` = real region) and, when every image has them,
    ``region_class_probs (B, R, C)``. ``max_regions`` keeps each image's first regions
    (detectors list them by confidence).
    """
    if not items:
        raise ValueError("pad_regions: no images given")
    dims = {item.features.shape[1] for item in items}
    if len(dims) != 1:
        raise ValueError(f"pad_regions: images have different feature sizes {sorted(dims)}")
    counts = [item.num_boxes if max_regions is None else min(item.num_boxes, max_regions) for item in items]
    length = max(max(counts), 1)  # at least one (masked) slot so that shapes stay valid
    batch = len(items)
    features = torch.zeros(batch, length, dims.pop())
    boxes = torch.zeros(batch, length, 4)
    mask = torch.zeros(batch, length, dtype=torch.bool)
    for i, (item, n) in enumerate(zip(items, counts)):
        features[i, :n] = item.features[:n]
        boxes[i, :n] = item.normalized_boxes()[:n]
        mask[i, :n] = True
    out = {"region_features": features, "region_boxes": boxes, "region_mask": mask}
    if all(item.class_probs is not None for item in items):
        classes = {item.class_probs.shape[1] for item in items}
        if len(classes) != 1:
            raise ValueError(f"pad_regions: images have different class counts {sorted(classes)}")
        probs = torch.zeros(batch, length, classes.pop())
        for i, (item, n) in enumerate(zip(items, counts)):
            probs[i, :n] = item.class_probs[:n]
        out["region_class_probs"] = probs
    return out


__all__ = ["RegionFeatures", "load_region_npz", "pad_regions"]
