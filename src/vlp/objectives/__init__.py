"""Pretraining objectives: each ``forward(model_outputs, batch) -> (loss, logs)``."""

from __future__ import annotations

from typing import Any


def validate_objectives(objectives: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Check objective names and options; returns them unchanged (placeholder until objectives land)."""
    return objectives
