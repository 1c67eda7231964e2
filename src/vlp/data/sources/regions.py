"""Precomputed region features: one ``.npz`` per image, bottom-up-attention style.

Keys read (aliases of the common extraction scripts in brackets):
- ``features`` [``x``]: (R, F) float region descriptors;
- ``boxes`` [``bbox``]: (R, 4) xyxy in pixels of the original image;
- ``image_w``, ``image_h``: that image's size (used to normalize the boxes to [0, 1]);
- ``num_boxes`` [``num_bbox``]: R (optional; checked when present);
- ``objects_id``: (R,) detector class ids (optional; become OSCAR tags with a name list);
- ``objects_conf``: (R,) detector scores (optional);
- ``cls_prob``: (R, C) detector class distribution (optional; the MRC-KL target).
Files are read with ``allow_pickle=False``: a key read above that holds Python
objects makes the file ``bad_regions`` instead of being unpickled; other keys
(some extraction scripts store an ``info`` dict) are never touched.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

_ALIASES = {"features": ("features", "x"), "boxes": ("boxes", "bbox"), "num_boxes": ("num_boxes", "num_bbox")}


class RegionError(Exception):
    """A region file that cannot be used; ``reason`` is a skip reason."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


def _get(npz: Any, name: str) -> np.ndarray | None:
    for key in _ALIASES.get(name, (name,)):
        if key in npz.files:
            return npz[key]
    return None


def load_regions(path: str | Path, max_regions: int = 0) -> dict[str, np.ndarray]:
    """Read one region file.

    Returns ``features`` (R, F) float32, ``boxes`` (R, 4) float32 normalized
    xyxy in [0, 1], and when present ``class_probs`` (R, C) float32,
    ``objects_id`` (R,) int64 and ``objects_conf`` (R,) float32. With
    ``max_regions > 0`` only the first ``max_regions`` regions are kept
    (extraction scripts store them by decreasing confidence).
    """
    path = Path(path)
    if not path.exists():
        raise RegionError("missing_file", f"{path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as npz:
            features, boxes = _get(npz, "features"), _get(npz, "boxes")
            width, height = _get(npz, "image_w"), _get(npz, "image_h")
            num = _get(npz, "num_boxes")
            optional = {k: _get(npz, k) for k in ("cls_prob", "objects_id", "objects_conf")}
    except ValueError as err:  # object arrays need pickle, which stays off
        raise RegionError("bad_regions", f"{path}: {err}") from err
    except (OSError, zipfile.BadZipFile, EOFError, KeyError) as err:
        raise RegionError("bad_regions", f"{path}: not a readable npz ({err})") from err
    if features is None or boxes is None or width is None or height is None:
        raise RegionError("bad_regions", f"{path}: needs features (or x), boxes (or bbox), image_w and image_h")
    features = np.asarray(features, dtype=np.float32)
    boxes = np.asarray(boxes, dtype=np.float32)
    if features.ndim != 2 or boxes.shape != (features.shape[0], 4):
        raise RegionError("bad_regions", f"{path}: features {features.shape} and boxes {boxes.shape} do not match")
    if num is not None and int(np.asarray(num).reshape(-1)[0]) != features.shape[0]:
        raise RegionError("bad_regions", f"{path}: num_boxes={int(np.asarray(num).reshape(-1)[0])} "
                          f"but {features.shape[0]} feature rows")  # fmt: skip
    w, h = float(np.asarray(width).reshape(-1)[0]), float(np.asarray(height).reshape(-1)[0])
    if not (w > 0 and h > 0) or not np.isfinite(features).all() or not np.isfinite(boxes).all():
        raise RegionError("bad_regions", f"{path}: image size {w}x{h} or non-finite values")
    out = {"features": features, "boxes": np.clip(boxes / np.array([w, h, w, h], dtype=np.float32), 0.0, 1.0)}
    count = features.shape[0]
    if optional["cls_prob"] is not None:
        probs = np.asarray(optional["cls_prob"], dtype=np.float32)
        if probs.ndim != 2 or probs.shape[0] != count:
            raise RegionError("bad_regions", f"{path}: cls_prob {probs.shape} does not match {count} regions")
        out["class_probs"] = probs
    if optional["objects_id"] is not None:
        out["objects_id"] = np.asarray(optional["objects_id"]).astype(np.int64).reshape(-1)[:count]
    if optional["objects_conf"] is not None:
        out["objects_conf"] = np.asarray(optional["objects_conf"], dtype=np.float32).reshape(-1)[:count]
    if max_regions > 0:
        out = {k: v[:max_regions] for k, v in out.items()}
    return out
