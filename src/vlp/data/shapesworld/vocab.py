"""The closed world of ShapesWorld: shapes, colours, sizes, relations and their words.

Everything here is plain data. Geometry is in *unit* coordinates: a shape's
outline is given for an object centred at (0, 0) with half-extent 1, y pointing
down (image convention); the scene scales it by the object's radius.
"""

from __future__ import annotations

import math

GENERATOR_VERSION = "1.0"

# Category order = COCO category ids 1..6 and the 0-based class index of the region files.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star", "cross")

# Saturated colours, far apart in RGB and far from the low-saturation backgrounds, so
# an object's interior pixels are exactly its palette colour and never a background's.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 38, 38),
    "green": (40, 160, 60),
    "blue": (35, 75, 215),
    "yellow": (240, 205, 25),
    "purple": (135, 55, 185),
    "orange": (245, 125, 20),
    "cyan": (25, 190, 205),
}

# Size classes by half-extent as a fraction of the image side (low, high): the ranges do
# not touch, so "bigger" (a larger class) always means a visibly larger extent.
SIZES: tuple[str, ...] = ("small", "medium", "large")
SIZE_RADIUS: dict[str, tuple[float, float]] = {
    "small": (0.080, 0.092),
    "medium": (0.115, 0.128),
    "large": (0.152, 0.168),
}

# Binary relations between two objects' boxes and absolute positions in the image.
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom")

# Synonyms used in captions, questions and referring expressions. Each word names one
# concept only, so the text stays unambiguous to learn from; answers use canonical names.
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc"),
    "square": ("square", "box"),
    "triangle": ("triangle",),
    "diamond": ("diamond", "rhombus"),
    "star": ("star",),
    "cross": ("cross",),
}
PLURALS: dict[str, str] = {
    "circle": "circles",
    "disc": "discs",
    "square": "squares",
    "box": "boxes",
    "triangle": "triangles",
    "diamond": "diamonds",
    "rhombus": "rhombuses",
    "star": "stars",
    "cross": "crosses",
    "object": "objects",
    "shape": "shapes",
}
COLOR_WORDS: dict[str, tuple[str, ...]] = {name: (name,) for name in COLORS}
COLOR_WORDS["purple"] = ("purple", "violet")
SIZE_WORDS: dict[str, tuple[str, ...]] = {
    "small": ("small", "little"),
    "medium": ("medium",),
    "large": ("large", "big"),
}
# Nouns for "an object of any shape".
OBJECT_WORDS: tuple[str, ...] = ("object", "shape")
# Relation phrases; "left"/"right" only ever appear in these and in the absolute positions,
# so a horizontal flip that swaps the two words keeps every sentence true.
RELATION_WORDS: dict[str, tuple[str, ...]] = {
    "left of": ("left of", "to the left of"),
    "right of": ("right of", "to the right of"),
    "above": ("above",),
    "below": ("below",),
}
POSITION_WORDS: dict[str, tuple[str, ...]] = {
    "left": ("on the left",),
    "right": ("on the right",),
    "top": ("at the top",),
    "bottom": ("at the bottom",),
}
NUMBER_WORDS: tuple[str, ...] = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def _regular_polygon(n: int, radii: tuple[float, ...], start_deg: float = -90.0) -> list[tuple[float, float]]:
    """Vertices of a polygon whose k-th vertex has radius ``radii[k % len(radii)]``."""
    step = 360.0 / n
    return [
        (radii[k % len(radii)] * math.cos(math.radians(start_deg + k * step)),
         radii[k % len(radii)] * math.sin(math.radians(start_deg + k * step)))
        for k in range(n)
    ]  # fmt: skip


_ARM = 0.34  # half-width of the cross's arms
# Outlines in unit coordinates (the circle is drawn as an ellipse; its polygon is for COCO).
SHAPE_POLYGONS: dict[str, list[tuple[float, float]]] = {
    "circle": _regular_polygon(24, (1.0,)),
    "square": [(-0.85, -0.85), (0.85, -0.85), (0.85, 0.85), (-0.85, 0.85)],
    "triangle": [(0.0, -1.0), (1.0, 0.8), (-1.0, 0.8)],
    "diamond": [(0.0, -1.0), (0.75, 0.0), (0.0, 1.0), (-0.75, 0.0)],
    "star": _regular_polygon(10, (1.0, 0.45)),
    "cross": [
        (-_ARM, -1.0), (_ARM, -1.0), (_ARM, -_ARM), (1.0, -_ARM), (1.0, _ARM), (_ARM, _ARM),
        (_ARM, 1.0), (-_ARM, 1.0), (-_ARM, _ARM), (-1.0, _ARM), (-1.0, -_ARM), (-_ARM, -_ARM),
    ],
}  # fmt: skip


def _extent(name: str) -> tuple[float, float, float, float]:
    if name == "circle":  # exact, not the inscribed 24-gon
        return (-1.0, -1.0, 1.0, 1.0)
    xs = [p[0] for p in SHAPE_POLYGONS[name]]
    ys = [p[1] for p in SHAPE_POLYGONS[name]]
    return (min(xs), min(ys), max(xs), max(ys))


def _area(name: str) -> float:
    if name == "circle":
        return math.pi
    pts = SHAPE_POLYGONS[name]
    # shoelace formula
    return abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(pts, pts[1:] + pts[:1]))) / 2.0


# Unit bounding box (x0, y0, x1, y1) and unit area of each shape.
SHAPE_EXTENT: dict[str, tuple[float, float, float, float]] = {name: _extent(name) for name in SHAPES}
SHAPE_AREA: dict[str, float] = {name: _area(name) for name in SHAPES}


def plural(noun: str) -> str:
    """Plural of a shape or object noun used by ShapesWorld."""
    return PLURALS[noun]


def vocabulary() -> dict[str, object]:
    """The whole vocabulary as JSON-ready data (written to ``meta.json``)."""
    return {
        "shapes": list(SHAPES),
        "colors": {name: list(rgb) for name, rgb in COLORS.items()},
        "sizes": list(SIZES),
        "size_radius": {name: list(r) for name, r in SIZE_RADIUS.items()},
        "relations": list(RELATIONS),
        "positions": list(POSITIONS),
        "synonyms": {
            "shapes": {k: list(v) for k, v in SHAPE_WORDS.items()},
            "colors": {k: list(v) for k, v in COLOR_WORDS.items()},
            "sizes": {k: list(v) for k, v in SIZE_WORDS.items()},
            "objects": list(OBJECT_WORDS),
            "relations": {k: list(v) for k, v in RELATION_WORDS.items()},
            "positions": {k: list(v) for k, v in POSITION_WORDS.items()},
            "plurals": dict(PLURALS),
            "numbers": list(NUMBER_WORDS),
        },
    }
