"""``report.md`` of a demo run: the results table with chance levels, the timings of every step and
the pictures (PNG files next to the report), each with a line saying what to look at."""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vlp.demo.table import ResultRow, fmt_number, markdown_table, results_table

# (figure key, section title, what the picture shows)
SECTIONS: tuple[tuple[str, str, str], ...] = (
    ("loss_curves", "Training curves",
     "The image tower's tagging loss, the pretraining losses (ITC, ITM with any word-swap pairs, MLM; "
     "smoothed, raw values faint) and the loss of each fine-tune."),
    ("retrieval", "Retrieval from text",
     "The five test images the pretrained dual side ranks highest for each query; a green frame means the "
     "image holds the named object."),
    ("heatmap", "Zero-shot heat maps",
     "Patch-text similarity of the pretrained dual side (each final patch token projected into the joint space, "
     "as the max-pooled image embedding is; no fine-tuning) for a colour-shape query among other objects; the "
     "white box comes from thresholding the map."),
    ("vqa", "Visual question answering", "Test questions, the fine-tuned classifier's answer and the true one."),
    ("refexp", "Referring expressions",
     "Each expression's true box (green) and the candidate object the fine-tuned model chose (red, dashed)."),
    ("captions", "Captions",
     "Beam-search captions of test images (bold, above each image), with one of their reference captions (grey, "
     "below)."),
    ("generation", "Text-to-image", "Images generated from captions."),
)  # fmt: skip


def table_notes(rows: Sequence[ResultRow]) -> list[str]:
    """``task, metric: note`` for every row that carries a note (printed under the results table)."""
    return [f"{r.task}, {r.metric}: {r.note}" for r in rows if r.note]


def _timing_table(timings: Sequence[Mapping[str, Any]]) -> str:
    rows = [[t["step"], fmt_number(t["wall_s"]), fmt_number(t["cpu_s"])] for t in timings]
    rows.append(["total", fmt_number(sum(t["wall_s"] for t in timings)), fmt_number(sum(t["cpu_s"] for t in timings))])
    return markdown_table(["step", "wall s", "CPU s"], rows)


def _settings(config: Mapping[str, Any]) -> str:
    keys = ("images", "image_size", "pretrain_steps", "vqa_steps", "refexp_steps", "caption_steps", "batch_size",
            "threads")  # fmt: skip
    return ", ".join(f"{k}={config[k]}" for k in keys if k in config)


def write_report(
    out_dir: str | Path,
    rows: Sequence[ResultRow],
    timings: Sequence[Mapping[str, Any]],
    figures: Mapping[str, str | Path],
    config: Mapping[str, Any],
    notes: Sequence[str] = (),
    command: str = "vlp demo",
    captions: Mapping[str, str] | None = None,
) -> Path:
    """Write ``out_dir/report.md``; figure paths are linked relative to the report. ``captions``
    replaces the fixed text under a figure (by figure key) with what this run knows about it."""
    from vlp import __version__

    out_dir = Path(out_dir)
    wall = sum(t["wall_s"] for t in timings)
    cpu = sum(t["cpu_s"] for t in timings)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    tower = "trained the image tower to tag the objects of each image, then from it " if config.get("tag_steps") else ""
    lines = [
        "# vlp demo",
        "",
        f"`{command}` with vlp {__version__}: it generated ShapesWorld, trained a tokenizer on its text, "
        f"{tower}pretrained a tiny ALBEF-style model (ITC + ITM + MLM), evaluated retrieval, zero-shot classification "
        "and zero-shot heat maps straight from pretraining, and fine-tuned VQA, referring expressions and "
        f"captioning from the pretrained weights. {fmt_number(wall)} s wall, {fmt_number(cpu)} s CPU on "
        f"{cores} core(s) ({platform.machine()}, Python {platform.python_version()}); {_settings(config)}.",
        "",
        "## Results",
        "",
        "Every score is on the test split, which no step trained on. *Chance* is what a blind guesser scores "
        "on the same test data: the same score for every image (tagging: each shape's share of the images), a "
        "random ranking (retrieval), always the most frequent class (zero-shot), a "
        "question-blind answer prior (VQA), a uniformly random object of the image (referring expressions), a "
        "mean-size box at the image centre (heat-map boxes), a random point (pointing) and a random training "
        "caption (captioning).",
        "",
        results_table(rows),
        "",
    ]
    if row_notes := table_notes(rows):
        lines += [*(f"- {n}" for n in row_notes), ""]
    for key, title, text in SECTIONS:
        if key in figures:
            rel = os.path.relpath(Path(figures[key]), out_dir)
            text = (captions or {}).get(key, text)
            lines += [f"## {title}", "", text, "", f"![{title}]({rel})", ""]
    if notes:
        lines += ["## Notes", "", *(f"- {n}" for n in notes), ""]
    lines += ["## Timings", "", _timing_table(timings), ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


__all__ = ["SECTIONS", "table_notes", "write_report"]
