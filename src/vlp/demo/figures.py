"""The report's pictures (matplotlib, Agg backend, PNG files): loss curves, a retrieval grid,
predicted vs true boxes, captions under their images, heat maps and VQA answers.

Every function takes plain data (paths, boxes in pixels, strings) and a PNG path, so that the
pictures can be drawn from saved predictions as well as from a live run. ShapesWorld images are
tiny (32x32), so they are shown enlarged without smoothing.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

GOOD, BAD, TRUTH = "#1a9850", "#d73027", "#1a9850"  # green hit / red miss / green ground truth
PREDICTED = "#d73027"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _image(path: str | Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _show(ax: Any, image: np.ndarray, title: str = "", color: str | None = None, fontsize: int = 8) -> None:
    h, w = image.shape[:2]
    ax.imshow(image, interpolation="nearest", extent=(0, w, h, 0))
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=fontsize, color=color or "black")


def _frame(ax: Any, color: str, width: float = 4.0) -> None:
    for spine in ax.spines.values():
        spine.set_edgecolor(color)
        spine.set_linewidth(width)


def _box(ax: Any, box: Sequence[float], color: str, style: str = "-") -> None:
    from matplotlib.patches import Rectangle

    x1, y1, x2, y2 = (float(v) for v in box)
    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=2, linestyle=style))


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight", facecolor="white")
    _pyplot().close(fig)
    return path


def _grid(n: int, cols: int, cell: tuple[float, float]) -> tuple[Any, list[Any]]:
    """``n`` panels, ``cols`` per row, each ``cell`` inches; unused panels hidden."""
    plt = _pyplot()
    rows = max(1, -(-n // cols))
    # constrained layout makes room for every title, label and the figure title; tight_layout let a row's
    # titles run into the images above and left texts placed below a panel out of its reckoning
    fig, axes = plt.subplots(rows, cols, figsize=(cell[0] * cols, cell[1] * rows), squeeze=False, layout="constrained")
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.axis("off")
    return fig, flat[:n]


def _title(fig: Any, text: str) -> None:
    """A figure title above the panels (constrained layout leaves it a strip of its own)."""
    fig.suptitle(text, fontsize=9)


def _wrap(text: str, width: int = 26) -> str:
    return "\n".join(textwrap.wrap(text, width)) or text


# ----------------------------------------------------------------------------- loss curves


def loss_curves(runs: Mapping[str, str | Path], path: str | Path, smoothing: float = 0.6) -> Path:
    """One panel per run (``name -> run folder`` with ``metrics.jsonl``): the total loss and every
    ``loss_*`` term, smoothed like TensorBoard (raw values faint behind)."""
    from vlp.train.logging import METRICS_FILE, read_metrics
    from vlp.train.plot import curves, smooth

    # a grid of three panels per row: one row of six was a 2298 x 340 strip, unreadable in the report
    fig, axes = _grid(len(runs), min(3, len(runs)), (4.2, 3.2))
    for ax, (name, run_dir) in zip(axes, runs.items()):
        series = curves(read_metrics(Path(run_dir) / METRICS_FILE))
        names = [k for k in series if k == "loss" or k.startswith("loss_")]
        for key in names:
            steps, values = series[key]
            label = "total" if key == "loss" else key[len("loss_") :].upper()
            line = ax.plot(steps, smooth(values, smoothing), label=label, linewidth=2 if key == "loss" else 1.3)[0]
            ax.plot(steps, values, color=line.get_color(), alpha=0.2, linewidth=0.8)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        if len(names) > 1:
            ax.legend(fontsize=7)
    return _save(fig, path)


# ----------------------------------------------------------------------------- task pictures


def retrieval_grid(examples: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """One row per text query (``query``, ``images`` best first, ``hits``): green frame = the image
    holds what the query names, red = it does not."""
    plt = _pyplot()
    cols = max(len(e["images"]) for e in examples)
    fig, axes = plt.subplots(len(examples), cols, figsize=(1.5 * cols + 1.5, 1.75 * len(examples)), squeeze=False,
                             layout="constrained")  # fmt: skip
    for row, example in zip(axes, examples):
        for k, ax in enumerate(row):
            if k >= len(example["images"]):
                ax.axis("off")
                continue
            _show(ax, _image(example["images"][k]), f"#{k + 1}")
            _frame(ax, GOOD if example["hits"][k] else BAD)
        row[0].set_ylabel(_wrap(f"“{example['query']}”", 18), fontsize=8, rotation=0, ha="right", va="center")
    _title(fig, "top-5 test images per text query (green: holds the named object)")
    return _save(fig, path)


def box_grid(examples: Sequence[Mapping[str, Any]], path: str | Path, cols: int = 4) -> Path:
    """Referring expressions: the true box (green) and the predicted one (red, dashed) on each image."""
    fig, axes = _grid(len(examples), cols, (2.3, 2.9))
    for ax, example in zip(axes, examples):
        _show(ax, _image(example["image"]), _wrap(example["expression"]), fontsize=7)
        _box(ax, example["target"], TRUTH)
        _box(ax, example["predicted"], PREDICTED, "--")
    _title(fig, "referring expressions: true box green, predicted box red (dashed)")
    return _save(fig, path)


def caption_grid(examples: Sequence[Mapping[str, Any]], path: str | Path, cols: int = 4) -> Path:
    """Generated captions (bold) above their images, one human-style reference in grey below.

    Both are the panel's title and x label, which the layout makes room for (a free text placed under the
    panel was not: the first row's references hid behind the second row and the last row's sat far below)."""
    fig, axes = _grid(len(examples), cols, (2.4, 3.2))
    for ax, example in zip(axes, examples):
        _show(ax, _image(example["image"]))
        ax.set_title(_wrap(example["generated"]), fontsize=8, fontweight="bold")
        ax.set_xlabel(_wrap("ref: " + example["reference"], 30), fontsize=7, color="#666666")
    _title(fig, "generated captions (bold, above) and one reference (grey, below)")
    return _save(fig, path)


def heatmap_grid(examples: Sequence[Mapping[str, Any]], path: str | Path, cols: int = 4) -> Path:
    """Per query: the image, and the patch-text similarity heat map over it with the box it gives
    (white) and the true box (green)."""
    fig, flat = _grid(2 * len(examples), 2 * cols, (1.6, 2.0))
    for k, example in enumerate(examples):
        image = _image(example["image"])
        left, right = flat[2 * k], flat[2 * k + 1]
        _show(left, image, _wrap(f"“{example['query']}”", 18))
        _show(right, image, "heat map")
        h, w = image.shape[:2]
        right.imshow(example["heat"], cmap="inferno", alpha=0.6, extent=(0, w, h, 0), interpolation="bilinear")
        _box(right, example["target"], TRUTH)
        _box(right, example["box"], "white", "--")
    _title(fig, "zero-shot heat maps (patch-text similarity): true box green, box from the map white")
    return _save(fig, path)


def vqa_grid(examples: Sequence[Mapping[str, Any]], path: str | Path, cols: int = 4) -> Path:
    """Questions over their images with the predicted answer (green if it equals the most common
    human answer, else red) and that answer."""
    fig, axes = _grid(len(examples), cols, (2.4, 3.4))
    for ax, example in zip(axes, examples):
        right = str(example["predicted"]).strip().lower() == str(example["answer"]).strip().lower()
        _show(ax, _image(example["image"]), _wrap(example["question"]), fontsize=7)
        ax.set_xlabel(f"model: {example['predicted']}\ntruth: {example['answer']}", fontsize=8,
                      color=GOOD if right else BAD)  # fmt: skip
    _title(fig, "VQA: predicted answer (green = right) and the true answer")
    return _save(fig, path)


def image_grid(images: Sequence[Any], titles: Sequence[str], path: str | Path, cols: int = 5) -> Path:
    """Images (arrays ``(H, W, 3)`` uint8 or paths) with a title each, e.g. generated images."""
    fig, axes = _grid(len(images), min(cols, len(images)), (1.8, 2.0))
    for ax, image, title in zip(axes, images, titles):
        _show(ax, image if isinstance(image, np.ndarray) else _image(image), _wrap(title, 22), fontsize=7)
    return _save(fig, path)


__all__ = ["box_grid", "caption_grid", "heatmap_grid", "image_grid", "loss_curves", "retrieval_grid", "vqa_grid"]
