"""Classic models as recipes of parts: ``create_model(name)``, ``list_models()``, save/load.

The heavy modules (torch models) are imported on first use so that ``import vlp`` and
``vlp --help`` stay fast.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "VisionLanguageModel": "vlp.models.model",
    "create_model": "vlp.models.model",
    "save_pretrained": "vlp.models.saving",
    "load": "vlp.models.saving",
    "load_tokenizer": "vlp.models.saving",
    "load_preprocess": "vlp.models.saving",
    "load_weights": "vlp.models.saving",
    "CheckpointError": "vlp.models.saving",
}


def list_models() -> list[str]:
    from vlp.recipe import recipe_names

    return recipe_names()


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vlp.models' has no attribute {name!r}")


__all__ = ["list_models", *_LAZY]
