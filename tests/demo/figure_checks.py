"""Layout checks of matplotlib figures with the renderer's own extents: no text on another text or on a panel."""

from __future__ import annotations

from typing import Any


def _texts(fig: Any) -> list[tuple[str, Any]]:
    found = []
    if fig._suptitle is not None:
        found.append(("suptitle", fig._suptitle))
    for n, ax in enumerate(fig.axes):
        if not ax.get_visible() or not ax.axison:
            continue
        for kind, text in (("title", ax.title), ("xlabel", ax.xaxis.label), ("ylabel", ax.yaxis.label)):
            found.append((f"axes {n} {kind}", text))
        found += [(f"axes {n} text", t) for t in ax.texts]
    return [(name, t) for name, t in found if t.get_visible() and t.get_text().strip()]


def _overlap(a: Any, b: Any, tolerance: float = 1.0) -> bool:
    """True when the boxes share more than ``tolerance`` pixels in both directions."""
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    return width > tolerance and height > tolerance


def overlaps(fig: Any) -> list[str]:
    """Every text (titles, axis labels, free texts, the figure title) that overlaps another text or a panel."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [(name, t.get_window_extent(renderer)) for name, t in _texts(fig)]
    panels = [(f"axes {n}", ax.get_window_extent(renderer)) for n, ax in enumerate(fig.axes) if ax.axison]
    found = []
    for i, (name, box) in enumerate(texts):
        found += [f"{name} on {other}" for other, box2 in texts[i + 1 :] if _overlap(box, box2)]
        found += [f"{name} on {panel}" for panel, pbox in panels if _overlap(box, pbox)]
    return found


def text_inside_figure(fig: Any) -> list[str]:
    """Texts that stick out of the figure (cut off when it is saved without bbox_inches='tight')."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    bounds = fig.bbox
    out = []
    for name, text in _texts(fig):
        box = text.get_window_extent(renderer)
        if box.x0 < bounds.x0 - 1 or box.y0 < bounds.y0 - 1 or box.x1 > bounds.x1 + 1 or box.y1 > bounds.y1 + 1:
            out.append(name)
    return out
