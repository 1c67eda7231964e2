"""Markdown tables of the demo (task | metric | score | chance) and of the taxonomy benchmark."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class ResultRow:
    """One line of the demo table: a task's score and what a blind guesser scores on the same data."""

    task: str
    metric: str
    score: float
    chance: float | None
    note: str = ""

    def ratio(self) -> float | None:
        """``score / chance`` (None without a positive chance level)."""
        if self.chance is None or self.chance <= 0:
            return None
        return self.score / self.chance

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fmt_number(value: float | None, digits: int = 1) -> str:
    """``12.3``; ``-`` for None; ``nan`` for NaN."""
    if value is None:
        return "-"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return f"{value:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: Sequence[str] | None = None) -> str:
    """A GitHub markdown table; ``align`` per column: ``l`` or ``r`` (default: first left, rest right).

    Cells are padded so that the plain text lines up when printed to a terminal too.
    """
    if any(len(row) != len(header) for row in rows):
        raise ValueError(f"every row needs {len(header)} cells, got {[len(r) for r in rows]}")
    align = list(align or ["l"] + ["r"] * (len(header) - 1))
    widths = [max(3, len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        padded = [str(c).ljust(w) if a == "l" else str(c).rjust(w) for c, w, a in zip(cells, widths, align)]
        return "| " + " | ".join(padded) + " |"

    rule = ["-" * (w - 1) + ":" if a == "r" else "-" * w for w, a in zip(widths, align)]
    return "\n".join([line(header), "| " + " | ".join(rule) + " |", *(line(r) for r in rows)])


def _times(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.1f}x"


def results_table(rows: Sequence[ResultRow]) -> str:
    """The demo's one table: task | metric | score | chance | x chance."""
    body = [[r.task, r.metric, fmt_number(r.score), fmt_number(r.chance), _times(r.ratio())] for r in rows]
    return markdown_table(["task", "metric", "score", "chance", "x chance"], body, ["l", "l", "r", "r", "r"])


# ----------------------------------------------------------------------------- taxonomy

TAXONOMY_COLUMNS: tuple[tuple[str, str, int], ...] = (
    # (result key, header, digits)
    ("retrieval_r1", "R@1 (t2i/i2t mean)", 1),
    ("retrieval_rsum", "RSUM", 1),
    ("vqa", "VQA acc", 1),
    ("refexp", "RefExp acc@0.5", 1),
    ("params_k", "params (k)", 1),
    ("latency_retrieval_ms", "ms / retrieval query", 2),
    ("latency_vqa_ms", "ms / VQA question", 2),
)


def taxonomy_table(results: Sequence[dict[str, Any]], chance: dict[str, float] | None = None) -> str:
    """One row per architecture family (``family``, ``model``, ``input`` and the TAXONOMY_COLUMNS keys);
    a missing value prints ``-``. ``chance`` adds a last row of chance levels for the score columns."""
    header = ["family", "model", "input", *(h for _, h, _ in TAXONOMY_COLUMNS)]
    body = []
    for r in results:
        cells = [str(r.get("family", "")), str(r.get("model", "")), str(r.get("input", ""))]
        cells += [fmt_number(r.get(key), digits) + r.get(f"{key}_mark", "") for key, _, digits in TAXONOMY_COLUMNS]
        body.append(cells)
    if chance:
        body.append(["chance", "-", "-", *(fmt_number(chance.get(key), d) for key, _, d in TAXONOMY_COLUMNS)])
    return markdown_table(header, body, ["l", "l", "l"] + ["r"] * len(TAXONOMY_COLUMNS))


__all__ = ["TAXONOMY_COLUMNS", "ResultRow", "fmt_number", "markdown_table", "results_table", "taxonomy_table"]
