"""vlp: vision-language pretraining, from representations to downstream tasks."""

from __future__ import annotations

__version__ = "0.1.0"

from typing import Any  # noqa: E402

from vlp.data.batch import Batch  # noqa: E402
from vlp.models import list_models  # noqa: E402


def create_model(name_or_recipe: Any, **overrides: Any) -> Any:
    """Build a :class:`vlp.models.model.VisionLanguageModel` from a recipe name, file, Recipe or ModelConfig.

    ``create_model("vilt-tiny", **{"model.fusion.layers": 2})``; see :func:`vlp.models.model.create_model`.
    """
    from vlp.models.model import create_model as _create

    return _create(name_or_recipe, **overrides)


def load(folder: Any, device: Any = "cpu") -> Any:
    """The model saved by :func:`save_pretrained` in ``folder`` (weights loaded strictly, eval mode)."""
    from vlp.models.saving import load as _load

    return _load(folder, device)


def load_tokenizer(folder: Any) -> Any:
    """The tokenizer saved beside a model's weights."""
    from vlp.models.saving import load_tokenizer as _load_tokenizer

    return _load_tokenizer(folder)


def save_pretrained(model: Any, folder: Any, recipe: Any = None, tokenizer: Any = None, overwrite: bool = False) -> Any:
    """Write ``model.safetensors``, ``recipe.yaml`` and the tokenizer into ``folder`` atomically."""
    from vlp.models.saving import save_pretrained as _save

    return _save(model, folder, recipe=recipe, tokenizer=tokenizer, overwrite=overwrite)


__all__ = ["Batch", "__version__", "create_model", "list_models", "load", "load_tokenizer", "save_pretrained"]
