"""Region files from an "oracle detector": the ground-truth objects as bottom-up-attention regions.

``regions/{image_id:07d}.npz`` holds, for the R objects of one image (in the order of
its COCO annotations), with the key names of the bottom-up-attention feature files:

==================  ===============  ================================================
key                 shape / dtype    meaning
==================  ===============  ================================================
``features``        (R, 64) float32  region descriptor (below), fixed random projection
``boxes``           (R, 4) float32   x1, y1, x2, y2 in pixels
``image_w``         () int64         image width in pixels
``image_h``         () int64         image height in pixels
``num_boxes``       () int64         R
``objects_id``      (R,) int64       class index, 0-based into ``meta.json`` ``shapes``
``objects_conf``    (R,) float32     detector score of that class
``cls_prob``        (R, C) float32   class distribution (softened one-hot), C = #shapes
``attrs_id``        (R,) int64       colour index, 0-based into ``meta.json`` ``colors``
``attrs_conf``      (R,) float32     score of that attribute
``tags``            (R,) str         object tags (class names), as OSCAR feeds them
==================  ===============  ================================================

The descriptor is cheap and deterministic: alpha-weighted mean and std colour, box
geometry, area and fill ratio, the mask resampled to a 6x6 grid, and seven
scale-normalised central moments of the mask (57 numbers), projected to 64
dimensions by a Gaussian matrix drawn from a fixed seed (the same for every
dataset, so features are comparable across seeds). Files are written with fixed
zip timestamps, so the same scene always gives the same bytes; ``np.load`` reads
them (no pickle needed).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from vlp.data.shapesworld.render import Rendered
from vlp.data.shapesworld.scene import Scene
from vlp.data.shapesworld.vocab import COLORS, SHAPES

FEATURE_DIM = 64
DESCRIPTOR_DIM = 57
CLASS_CONFIDENCE = 0.9  # mass of the true class in cls_prob; the rest is spread evenly
_PROJECTION = (
    np.random.default_rng(20240611).standard_normal((DESCRIPTOR_DIM, FEATURE_DIM)) / DESCRIPTOR_DIM**0.5
).astype(np.float32)
_MOMENTS = ((2, 0), (0, 2), (1, 1), (3, 0), (0, 3), (2, 1), (1, 2))


def region_descriptor(image: np.ndarray, alpha: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """57 numbers describing one object: ``image`` (H, W, 3) uint8, ``alpha`` (H, W), ``box`` xyxy pixels."""
    height, width = alpha.shape
    x0, y0 = max(int(np.floor(box[0])), 0), max(int(np.floor(box[1])), 0)
    x1, y1 = min(int(np.ceil(box[2])), width), min(int(np.ceil(box[3])), height)
    a = alpha[y0:y1, x0:x1]
    pixels = image[y0:y1, x0:x1].astype(np.float32) / 255.0
    mass = float(a.sum()) + 1e-6
    mean = (pixels * a[:, :, None]).sum(axis=(0, 1)) / mass
    std = np.sqrt(((pixels - mean) ** 2 * a[:, :, None]).sum(axis=(0, 1)) / mass)
    bw, bh = box[2] - box[0], box[3] - box[1]
    geometry = [box[0] / width, box[1] / height, box[2] / width, box[3] / height, bw / width, bh / height]
    geometry += [mass / (width * height), mass / max(bw * bh, 1e-6)]
    grid = np.asarray(Image.fromarray(a).resize((6, 6), Image.Resampling.BOX), dtype=np.float32).ravel()
    # all central moments mu_pq (p, q <= 3) at once: mu[q, p] = sum_ij dy_i^q a_ij dx_j^p
    dx = np.arange(a.shape[1], dtype=np.float32) - float(a.sum(axis=0) @ np.arange(a.shape[1])) / mass
    dy = np.arange(a.shape[0], dtype=np.float32) - float(a.sum(axis=1) @ np.arange(a.shape[0])) / mass
    mu = np.vander(dy, 4, increasing=True).T @ a @ np.vander(dx, 4, increasing=True)
    # eta_pq = mu_pq / m00^(1 + (p+q)/2): invariant to translation and scale
    moments = [float(mu[q, p]) / mass ** (1 + (p + q) / 2) for p, q in _MOMENTS]
    parts = [mean, std, np.asarray(geometry, np.float32), grid, np.asarray(moments, np.float32)]
    return np.concatenate(parts).astype(np.float32)


def region_arrays(scene: Scene, rendered: Rendered) -> dict[str, np.ndarray]:
    """The region file's arrays for ``scene`` as rendered (see the module docstring)."""
    size = rendered.image.shape[0]
    boxes = np.asarray([obj.box(size) for obj in scene.objects], dtype=np.float32).reshape(-1, 4)
    descriptors = np.stack(
        [region_descriptor(rendered.image, rendered.alphas[k], tuple(boxes[k])) for k in range(len(scene.objects))]
    )
    classes = np.asarray([SHAPES.index(obj.shape) for obj in scene.objects], dtype=np.int64)
    n, c = len(classes), len(SHAPES)
    cls_prob = np.full((n, c), (1.0 - CLASS_CONFIDENCE) / (c - 1), dtype=np.float32)
    cls_prob[np.arange(n), classes] = CLASS_CONFIDENCE
    colors = list(COLORS)
    return {
        "features": descriptors @ _PROJECTION,
        "boxes": boxes,
        "image_w": np.asarray(size, dtype=np.int64),
        "image_h": np.asarray(size, dtype=np.int64),
        "num_boxes": np.asarray(n, dtype=np.int64),
        "objects_id": classes,
        "objects_conf": np.full(n, CLASS_CONFIDENCE, dtype=np.float32),
        "cls_prob": cls_prob,
        "attrs_id": np.asarray([colors.index(obj.color) for obj in scene.objects], dtype=np.int64),
        "attrs_conf": np.ones(n, dtype=np.float32),
        "tags": np.asarray([obj.shape for obj in scene.objects], dtype=np.str_),
    }


def _npy_bytes(array: np.ndarray) -> bytes:
    """``array`` in the .npy format, version 1.0 (what ``np.save`` writes, without its overhead)."""
    if not array.flags.c_contiguous:  # (np.ascontiguousarray would turn a 0-d array into 1-d)
        array = array.copy(order="C")
    descr, shape = np.lib.format.dtype_to_descr(array.dtype), tuple(array.shape)
    header = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': {shape!r}, }}"
    # magic (6) + version (2) + length (2) + header + newline, padded to a multiple of 64
    pad = -(10 + len(header) + 1) % 64
    header_bytes = (header + " " * pad + "\n").encode("latin1")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header_bytes)) + header_bytes + array.tobytes()


_DOS_DATE = (0 << 9) | (1 << 5) | 1  # 1980-01-01: a fixed timestamp keeps the bytes reproducible


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An uncompressed .npz (a stored zip of .npy files) whose bytes depend only on ``arrays``.

    Writing the zip directly is several times faster than ``zipfile`` for the ~10 tiny
    members of a region file; ``np.load`` / ``zipfile`` read it like any other.
    """
    local, central = bytearray(), bytearray()
    for key, value in arrays.items():
        name = f"{key}.npy".encode()
        data = _npy_bytes(np.asarray(value))
        crc = zlib.crc32(data)
        offset = len(local)
        local += struct.pack(
            "<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, _DOS_DATE, crc, len(data), len(data), len(name), 0
        )
        local += name + data
        central += struct.pack(
            "<IHHHHHHIIIHHHHHII",
            0x02014B50, 20, 20, 0, 0, 0, _DOS_DATE, crc, len(data), len(data), len(name), 0, 0, 0, 0, 0o644 << 16,
            offset,
        )  # fmt: skip
        central += name
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(arrays), len(arrays), len(central), len(local), 0)
    return bytes(local + central + end)


def write_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` as a reproducible, uncompressed ``.npz``."""
    Path(path).write_bytes(npz_bytes(arrays))
