"""``vlp demo`` and ``vlp bench taxonomy``: the toolkit end to end, and the survey's architecture
families measured on the same data and budget.

- :func:`run_demo` (:mod:`vlp.demo.pipeline`): ShapesWorld -> tokenizer -> ALBEF-style pretraining ->
  retrieval, zero-shot classification and heat maps -> VQA, referring expressions and captioning
  fine-tunes -> one results table with chance levels and ``report.md`` with pictures.
- :func:`run_taxonomy` (:mod:`vlp.demo.taxonomy`): single-stream (region, grid, patch), dual-stream,
  dual encoder, fusion + dual and MoME models trained alike; retrieval, VQA, referring expressions,
  parameters and latency in one table.

Names are imported on first use so that ``vlp --help`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "DemoConfig": "vlp.demo.config",
    "DemoResult": "vlp.demo.pipeline",
    "run_demo": "vlp.demo.pipeline",
    "TaxonomyConfig": "vlp.demo.taxonomy",
    "run_taxonomy": "vlp.demo.taxonomy",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vlp.demo' has no attribute {name!r}")
