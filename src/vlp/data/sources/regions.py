"""Precomputed region features: one ``.npz`` per image, bottom-up-attention style.

Keys read (aliases of the common extraction scripts in brackets):
- ``features`` [``x``]: (R, F) float region descriptors;
- ``boxes`` [``bbox``]: (R, 4) xyxy in pixels of the original image;
- ``image_w``, ``image_h``: that image's size (used to normalize the boxes to [0, 1]);
- ``num_boxes`` [``num_bbox``]: R (optional; checked when present);
- ``objects_id``: (R,) detector class ids (optional; become OSCAR tags with a name list);
- ``objects_conf``: (R,) detector scores (optional);
- ``attrs_id``, ``attrs_conf``: (R,) attribute ids and scores (optional);
- ``cls_prob``: (R, C) detector class distribution (optional; the MRC-KL target).
The optional keys may also sit in an ``info`` dict, where bottom-up-attention
extraction scripts (``np.savez(..., x=, bbox=, num_bbox=, image_h=, image_w=,
info={"objects_id": ..., "objects_conf": ..., "attrs_id": ..., ...})``) keep
them; a top-level key wins. Files are read with ``allow_pickle=False``: a key
read above that holds Python objects makes the file ``bad_regions`` instead of
being unpickled. ``info`` (a pickled object array) is read only when an
optional key is missing at the top level, and only through
:func:`vlp.data.safe_pickle.safe_loads_arrays`, which admits plain data and
numpy arrays and refuses anything else.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npy_format

from vlp.data.safe_pickle import safe_loads_arrays

_ALIASES = {"features": ("features", "x"), "boxes": ("boxes", "bbox"), "num_boxes": ("num_boxes", "num_bbox")}
_OPTIONAL = ("cls_prob", "objects_id", "objects_conf", "attrs_id", "attrs_conf")


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


def _info(npz: Any, path: Path) -> dict[str, Any]:
    """The ``info`` dict of an extraction script, read from its .npy member through the restricted
    unpickler (``np.load`` stays at ``allow_pickle=False``); {} when the file has none."""
    if "info" not in npz.files:
        return {}
    with npz.zip.open("info.npy") as member:
        version = npy_format.read_magic(member)
        read_header = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
        shape, _, dtype = read_header(member)
        if not dtype.hasobject:  # a plain array named info: nothing of ours in it
            return {}
        value = safe_loads_arrays(member.read(), f"{path}[info]")
    value = np.asarray(value)
    value = value.reshape(-1)[0] if value.size == 1 else None  # np.savez(info=dict) stores a 0-d object array
    if not isinstance(value, dict):
        raise RegionError("bad_regions", f"{path}: info {shape} holds no dict (expected info={{'objects_id': ...}})")
    return value


def load_regions(path: str | Path, max_regions: int = 0) -> dict[str, np.ndarray]:
    """Read one region file.

    Returns ``features`` (R, F) float32, ``boxes`` (R, 4) float32 normalized
    xyxy in [0, 1], and when present (top level or ``info``) ``class_probs``
    (R, C) float32, ``objects_id`` and ``attrs_id`` (R,) int64,
    ``objects_conf`` and ``attrs_conf`` (R,) float32. With
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
            optional = {k: _get(npz, k) for k in _OPTIONAL}
            if any(v is None for v in optional.values()):
                info = _info(npz, path)
                optional = {k: info.get(k) if v is None else v for k, v in optional.items()}
    except ValueError as err:  # object arrays need pickle, which stays off
        raise RegionError("bad_regions", f"{path}: {err}") from err
    except pickle.UnpicklingError as err:  # the info dict named a Python object, or is damaged
        raise RegionError("bad_regions", str(err)) from err
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
    for key, dtype in (("objects_id", np.int64), ("objects_conf", np.float32), ("attrs_id", np.int64),
                       ("attrs_conf", np.float32)):  # fmt: skip
        if optional[key] is not None:
            try:
                values = np.asarray(optional[key]).astype(dtype).reshape(-1)
            except (TypeError, ValueError) as err:
                raise RegionError("bad_regions", f"{path}: {key} is not numeric ({err})") from err
            out[key] = values[:count]
    if max_regions > 0:
        out = {k: v[:max_regions] for k, v in out.items()}
    return out
