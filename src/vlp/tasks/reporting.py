"""Reporting eval results: the plain-text metrics table and atomic JSON files (``results.json``).

Shared by every downstream task through :mod:`vlp.tasks.common`, which re-exports these names.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vlp.config import to_dict
from vlp.io.atomic import write_atomic

# metrics on their own scale, not percentages: the COCO-caption scores as pycocoevalcap reports them (BLEU,
# METEOR, ROUGE-L in [0, 1], CIDEr in [0, 10]) and settings such as a probe's regularization C
_OWN_SCALE = re.compile(r"^(bleu(_\d)?|meteor|rouge(_l)?|cider(-d)?|spice|c)$", re.IGNORECASE)


def _fmt(value: Any, key: str = "") -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if _OWN_SCALE.match(key.rsplit("/", 1)[-1]):
            return f"{value:.2f}" if abs(value) >= 1 else f"{value:.4f}"  # small [0, 1] scores need 4 decimals
        # every other score of vlp's tasks is a percentage (recall, accuracy, mAP, exact match, ...): always 2
        # decimals, so that 0.90% does not read as the fraction 0.9000 beside 80.00
        return f"{value:.2f}"
    return str(value)


def metrics_table(metrics: Mapping[str, Any], chance: Mapping[str, Any] | None = None, title: str = "") -> str:
    """A plain-text table: one row per scalar metric (nested dicts are flattened as ``a/b``), with
    its chance level when ``chance`` has the same key. Float scores are percentages (2 decimals) except
    the caption metrics and settings that have their own scale (``_OWN_SCALE``)."""
    rows: list[tuple[str, str, str]] = []
    chance = flatten(chance or {})
    for key, value in flatten(metrics).items():
        if isinstance(value, (list, tuple)):
            continue
        rows.append((key, _fmt(value, key), _fmt(chance[key], key) if key in chance else ""))
    show_chance = any(r[2] for r in rows)
    header = ("metric", "value", "chance") if show_chance else ("metric", "value")
    rows = [r if show_chance else r[:2] for r in rows]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    out = [title] if title else []
    out.append("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    out.append(line)
    for row in rows:
        out.append("  ".join([row[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(row[1:], widths[1:]))]))
    return "\n".join(out)


def flatten(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a/b": 1}``."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}/"))
        else:
            out[name] = value
    return out


def write_json(path: str | Path, data: Any) -> Path:
    """Write JSON atomically (temp file + rename), creating the folder."""
    return write_atomic(path, json.dumps(data, indent=1, ensure_ascii=False, default=_json_default))


def _json_default(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return to_dict(value)
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):  # tensors, numpy values
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def write_results(out_dir: str | Path, results: Mapping[str, Any]) -> Path:
    """``out_dir/results.json`` (atomically); returns its path."""
    return write_json(Path(out_dir) / "results.json", dict(results))


__all__ = ["flatten", "metrics_table", "write_json", "write_results"]
