"""Scenes: what is in a ShapesWorld image, as exact ground truth.

A :class:`Scene` is resolution independent: positions and radii are fractions of
the image side, so the same scene renders at any size (``render_scene``) and its
boxes scale with it (``SceneObject.box(size)``). Relations and absolute positions
are decided on the objects' boxes with a small margin, so a sentence that uses
them is true at every resolution and stays true (with left/right swapped) under
a horizontal flip.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from vlp.data.shapesworld.vocab import COLORS, SHAPE_EXTENT, SHAPES, SIZE_RADIUS, SIZES

# Boxes closer than this (fraction of the side) are in no clear relation: a sentence states a
# relation only with this gap, and singles out "the one X left of Y" only if every other X
# misses it by this much too. Keeps sentences true to the eye, after rounding and flips.
REL_GAP = 0.015
# Placed objects keep this gap between their boxes so no two ever touch or occlude.
PLACE_GAP = 0.04
# Objects keep this margin to the image border.
BORDER = 0.03

Pair = tuple[str, str]  # (shape, colour)


@dataclass(frozen=True)
class SceneObject:
    """One object: ``shape``, ``color``, ``size`` class; centre and half-extent in [0, 1] units."""

    shape: str
    color: str
    size: str
    cx: float
    cy: float
    radius: float

    def box(self, size: float = 1.0) -> tuple[float, float, float, float]:
        """Tight box (x0, y0, x1, y1) of the outline, scaled by ``size`` (pixels when size = image side)."""
        ex0, ey0, ex1, ey1 = SHAPE_EXTENT[self.shape]
        return (
            (self.cx + self.radius * ex0) * size,
            (self.cy + self.radius * ey0) * size,
            (self.cx + self.radius * ex1) * size,
            (self.cy + self.radius * ey1) * size,
        )

    def has(self, attrs: dict[str, str]) -> bool:
        """Whether the object has every attribute in ``attrs`` (keys: shape, color, size)."""
        return all(getattr(self, key) == value for key, value in attrs.items())


@dataclass(frozen=True)
class Background:
    """Low-saturation backdrop: ``solid`` or a linear ``gradient``, plus optional gaussian noise.

    ``tone`` is ``light`` or ``dark``; colours are RGB 0..255; ``angle`` is the gradient
    direction in radians; ``noise`` is the noise standard deviation in grey levels.
    """

    tone: str
    kind: str
    color_a: tuple[int, int, int]
    color_b: tuple[int, int, int]
    angle: float
    noise: float
    noise_seed: int


@dataclass(frozen=True)
class Scene:
    """Objects (non-overlapping) on a background."""

    objects: tuple[SceneObject, ...]
    background: Background

    def matching(self, attrs: dict[str, str]) -> list[int]:
        """Indices of the objects that have every attribute in ``attrs``."""
        return [i for i, obj in enumerate(self.objects) if obj.has(attrs)]

    def count(self, attrs: dict[str, str]) -> int:
        return len(self.matching(attrs))

    def to_dict(self) -> dict[str, Any]:
        return {"objects": [asdict(o) for o in self.objects], "background": asdict(self.background)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scene:
        bg = dict(data["background"])
        bg["color_a"] = tuple(bg["color_a"])
        bg["color_b"] = tuple(bg["color_b"])
        return cls(tuple(SceneObject(**o) for o in data["objects"]), Background(**bg))


def relation_holds(a: SceneObject, b: SceneObject, relation: str, margin: float = REL_GAP) -> bool:
    """Whether ``a`` is ``relation`` (left of / right of / above / below) ``b``: boxes at least ``margin`` apart.

    With a negative margin it says whether ``a`` *might* be seen in that relation; sentences
    that pick "the one object left of X" require the others to fail even that.
    """
    ax0, ay0, ax1, ay1 = a.box()
    bx0, by0, bx1, by1 = b.box()
    if relation == "left of":
        return ax1 + margin <= bx0
    if relation == "right of":
        return bx1 + margin <= ax0
    if relation == "above":
        return ay1 + margin <= by0
    if relation == "below":
        return by1 + margin <= ay0
    raise ValueError(f"unknown relation {relation!r}; expected one of left of, right of, above, below")


def position_holds(obj: SceneObject, position: str, margin: float = REL_GAP) -> bool:
    """Whether ``obj`` lies wholly in the ``position`` (left / right / top / bottom) half, ``margin`` clear."""
    x0, y0, x1, y1 = obj.box()
    if position == "left":
        return x1 <= 0.5 - margin
    if position == "right":
        return x0 >= 0.5 + margin
    if position == "top":
        return y1 <= 0.5 - margin
    if position == "bottom":
        return y0 >= 0.5 + margin
    raise ValueError(f"unknown position {position!r}; expected one of left, right, top, bottom")


def all_pairs() -> list[Pair]:
    """Every (shape, colour) combination, in vocabulary order."""
    return [(s, c) for s in SHAPES for c in COLORS]


def choose_holdout_pairs(seed: int, fraction: float) -> list[Pair]:
    """The compositional hold-out: ``fraction`` of all (shape, colour) pairs, chosen by ``seed``.

    Pairs are spread as evenly as possible over shapes and colours (at most
    ceil(k / #shapes) per shape and ceil(k / #colours) per colour), so each attribute
    keeps most of its training partners while the held-out combinations are new.
    """
    if not 0.0 <= fraction <= 0.5:
        raise ValueError(f"holdout_pairs={fraction!r}: expected a fraction of pairs in [0, 0.5]")
    pairs = all_pairs()
    k = int(round(fraction * len(pairs)))
    if fraction > 0 and k == 0:
        k = 1
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    shapes = [SHAPES[int(i)] for i in rng.permutation(len(SHAPES))]
    colors = [list(COLORS)[int(i)] for i in rng.permutation(len(COLORS))]
    n_s, n_c = len(shapes), len(colors)
    period = math.lcm(n_s, n_c)
    # walk the diagonals of the shuffled shape x colour grid: step t uses shape t mod S and
    # colour t mod C (shifted once per full period), which visits every pair once and keeps
    # the counts per shape and per colour balanced at every prefix
    chosen = [(shapes[t % n_s], colors[(t + t // period) % n_c]) for t in range(k)]
    return sorted(chosen, key=pairs.index)


def _sample_background(rng: np.random.Generator) -> Background:
    tone = "light" if rng.random() < 0.6 else "dark"
    low, high = (175.0, 235.0) if tone == "light" else (20.0, 70.0)

    def tint() -> tuple[int, int, int]:
        # a grey level plus a small per-channel tint: never saturated like an object colour
        base = rng.uniform(low, high)
        return tuple(int(round(v)) for v in np.clip(base + rng.uniform(-18.0, 18.0, 3), 0, 255))

    kind = "solid" if rng.random() < 0.4 else "gradient"
    color_a = tint()
    color_b = tint() if kind == "gradient" else color_a
    angle = float(rng.uniform(0.0, 2.0 * np.pi))
    noise = 0.0 if rng.random() < 0.5 else float(rng.uniform(2.0, 6.0))
    return Background(tone, kind, color_a, color_b, angle, noise, int(rng.integers(2**31 - 1)))


def _separated(box: tuple[float, ...], placed: Sequence[tuple[float, ...]]) -> bool:
    x0, y0, x1, y1 = box
    for px0, py0, px1, py1 in placed:
        apart_x = x1 + PLACE_GAP <= px0 or px1 + PLACE_GAP <= x0
        apart_y = y1 + PLACE_GAP <= py0 or py1 + PLACE_GAP <= y0
        if not (apart_x or apart_y):
            return False
    return True


def _place(
    rng: np.random.Generator, shape: str, size: str, placed: Sequence[tuple[float, ...]], tries: int = 40
) -> tuple[float, float, float] | None:
    """A (cx, cy, radius) whose box keeps clear of ``placed`` and the border, or None."""
    ex0, ey0, ex1, ey1 = SHAPE_EXTENT[shape]
    lo_r, hi_r = SIZE_RADIUS[size]
    for _ in range(tries):
        r = float(rng.uniform(lo_r, hi_r))
        cx = float(rng.uniform(BORDER - ex0 * r, 1.0 - BORDER - ex1 * r))
        cy = float(rng.uniform(BORDER - ey0 * r, 1.0 - BORDER - ey1 * r))
        box = (cx + ex0 * r, cy + ey0 * r, cx + ex1 * r, cy + ey1 * r)
        if _separated(box, placed):
            return cx, cy, r
    return None


def sample_scene(
    rng: np.random.Generator,
    min_objects: int = 1,
    max_objects: int = 4,
    exclude: Collection[Pair] = (),
    require: Sequence[Pair] = (),
    repeat_prob: float = 0.3,
    sizes: Sequence[str] = SIZES,
) -> Scene:
    """Draw a scene of ``min_objects``..``max_objects`` non-overlapping objects.

    ``exclude``: (shape, colour) pairs that must not occur. ``require``: if given, the
    scene contains at least one object with a pair drawn from it (the hold-out split).
    ``repeat_prob``: chance that an object reuses an earlier object's shape or colour,
    so that counts above one and attribute contrasts are common. ``sizes``: the size
    classes to draw from (all by default). If the image is too crowded for the drawn
    size, smaller classes are tried, then fewer objects are placed (never fewer than one).
    """
    if not 1 <= min_objects <= max_objects:
        raise ValueError(f"min_objects={min_objects}, max_objects={max_objects}: expected 1 <= min <= max")
    unknown = [s for s in sizes if s not in SIZES]
    if unknown or not sizes:
        raise ValueError(f"sizes={list(sizes)}: expected a non-empty subset of {list(SIZES)}")
    excluded = set(exclude)
    allowed = [p for p in all_pairs() if p not in excluded]
    if not allowed:
        raise ValueError("exclude removes every (shape, colour) pair")
    n = int(rng.integers(min_objects, max_objects + 1))
    objects: list[SceneObject] = []
    boxes: list[tuple[float, ...]] = []
    for k in range(n):
        if k == 0 and require:
            shape, color = require[int(rng.integers(len(require)))]
        elif objects and rng.random() < repeat_prob:
            prev = objects[int(rng.integers(len(objects)))]
            keep = "shape" if rng.random() < 0.5 else "color"
            options = [p for p in allowed if (p[0] if keep == "shape" else p[1]) == getattr(prev, keep)]
            shape, color = (options or allowed)[int(rng.integers(len(options or allowed)))]
        else:
            shape, color = allowed[int(rng.integers(len(allowed)))]
        first = SIZES.index(sizes[int(rng.integers(len(sizes)))])
        # too crowded for this size: try the smaller classes before giving up on the object
        for size in reversed(SIZES[: first + 1]):
            spot = _place(rng, shape, size, boxes)
            if spot is not None:
                cx, cy, r = spot
                obj = SceneObject(shape, color, size, cx, cy, r)
                objects.append(obj)
                boxes.append(obj.box())
                break
    order = rng.permutation(len(objects))  # the required object must not always come first
    return Scene(tuple(objects[i] for i in order), _sample_background(rng))
