"""Rendering a :class:`Scene` to pixels, anti-aliased by supersampling.

Each object's coverage is drawn at ``supersample`` times the resolution inside a
small crop around its box and box-filtered down (``Image.reduce``), giving an
alpha in [0, 1] per pixel. Objects are composited over the background with that
alpha, so interior pixels are exactly the palette colour and only the edge
pixels blend. The per-object alphas come back too (``render_layers``) for region
features, masks and checks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from vlp.data.shapesworld.scene import Background, Scene, SceneObject
from vlp.data.shapesworld.vocab import COLORS, SHAPE_POLYGONS


@dataclass
class Rendered:
    """``image``: (H, W, 3) uint8 RGB; ``alphas``: (N, H, W) float32 coverage of each object in [0, 1]."""

    image: np.ndarray
    alphas: np.ndarray


def render_background(background: Background, size: int) -> np.ndarray:
    """The backdrop alone: (size, size, 3) float32 in [0, 255]."""
    a = np.asarray(background.color_a, dtype=np.float32)
    if background.kind == "gradient":
        coords = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
        dx, dy = math.cos(background.angle), math.sin(background.angle)
        # position along the gradient direction, mapped to [0, 1] over the image
        t = (coords[None, :] * dx + coords[:, None] * dy) / (abs(dx) + abs(dy)) + 0.5
        b = np.asarray(background.color_b, dtype=np.float32)
        img = a + (b - a) * t[:, :, None]
    elif background.kind == "solid":
        img = np.broadcast_to(a, (size, size, 3)).copy()
    else:
        raise ValueError(f"background kind {background.kind!r}: expected solid or gradient")
    if background.noise > 0:
        noise_rng = np.random.default_rng(background.noise_seed)
        img += noise_rng.normal(0.0, background.noise, (size, size, 3)).astype(np.float32)
    return np.clip(img, 0.0, 255.0)


def _inset(points: list[tuple[float, float]], d: float) -> list[tuple[float, float]]:
    """``points`` (a simple polygon) with every edge moved ``d`` inwards (mitred corners)."""
    n = len(points)
    area2 = sum(points[k][0] * points[(k + 1) % n][1] - points[(k + 1) % n][0] * points[k][1] for k in range(n))
    sign = 1.0 if area2 > 0 else -1.0  # orientation decides which side of an edge is inside
    normals = []
    for k in range(n):
        (x0, y0), (x1, y1) = points[k], points[(k + 1) % n]
        length = math.hypot(x1 - x0, y1 - y0)
        normals.append((-(y1 - y0) / length * sign, (x1 - x0) / length * sign))
    out = []
    for k in range(n):
        (ax, ay), (bx, by) = normals[k - 1], normals[k]  # the two edges meeting at vertex k
        scale = d / (1.0 + ax * bx + ay * by)
        out.append((points[k][0] + (ax + bx) * scale, points[k][1] + (ay + by) * scale))
    return out


# PIL truncates vertex coordinates to integers and fills every pixel whose integer coordinate
# lies in the closed outline. Truncation shifts by half a pixel on average, which lines pixel
# centres up; the closed boundary adds about half a pixel all round, which an inset of half a
# (supersampled) pixel takes back. Measured area and extent then match the geometry.
_PIL_INSET = 0.5


def object_alpha(obj: SceneObject, size: int, supersample: int = 4) -> tuple[np.ndarray, int, int]:
    """Coverage of ``obj`` at ``size``: (alpha crop (h, w) float32, x offset, y offset)."""
    bx0, by0, bx1, by1 = obj.box(size)
    x0, y0 = max(int(math.floor(bx0)) - 1, 0), max(int(math.floor(by0)) - 1, 0)
    x1, y1 = min(int(math.ceil(bx1)) + 1, size), min(int(math.ceil(by1)) + 1, size)
    s = supersample
    canvas = Image.new("L", ((x1 - x0) * s, (y1 - y0) * s), 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy, r = (obj.cx * size - x0) * s, (obj.cy * size - y0) * s, obj.radius * size * s
    if obj.shape == "circle":
        q = r - _PIL_INSET
        draw.ellipse((cx - q, cy - q, cx + q, cy + q), fill=255)
    else:
        outline = [(cx + r * px, cy + r * py) for px, py in SHAPE_POLYGONS[obj.shape]]
        draw.polygon(_inset(outline, _PIL_INSET), fill=255)
    if s > 1:
        canvas = canvas.reduce(s)
    return np.asarray(canvas, dtype=np.float32) / 255.0, x0, y0


def render_layers(scene: Scene, size: int, supersample: int = 4) -> Rendered:
    """Render ``scene`` at ``size`` x ``size`` and return the image with each object's alpha."""
    if size < 8:
        raise ValueError(f"size={size}: ShapesWorld images must be at least 8 pixels wide")
    img = render_background(scene.background, size)
    alphas = np.zeros((len(scene.objects), size, size), dtype=np.float32)
    for k, obj in enumerate(scene.objects):
        alpha, x0, y0 = object_alpha(obj, size, supersample)
        h, w = alpha.shape
        alphas[k, y0 : y0 + h, x0 : x0 + w] = alpha
        color = np.asarray(COLORS[obj.color], dtype=np.float32)
        region = img[y0 : y0 + h, x0 : x0 + w]
        a = alpha[:, :, None]
        region *= 1.0 - a
        region += a * color
    return Rendered(np.rint(img).astype(np.uint8), alphas)


def render_scene(scene: Scene, size: int, supersample: int = 4) -> np.ndarray:
    """Render ``scene`` to an (size, size, 3) uint8 RGB array."""
    return render_layers(scene, size, supersample).image
