"""vlp: vision-language pretraining, from representations to downstream tasks.

The public API in one place (each name is imported on first use, so ``import vlp`` and
``vlp --help`` stay fast): build a model from a recipe, load one from any folder a user holds,
save one. The layers behind it are listed in README's Architecture section.
"""

from __future__ import annotations

__version__ = "0.1.0"

from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from vlp.data.batch import Batch  # noqa: E402


def create_model(name_or_recipe: Any, pretrained: str | Path | None = None, **overrides: Any) -> Any:
    """Build a :class:`vlp.models.model.VisionLanguageModel` from a recipe name, file, Recipe or ModelConfig.

    ``create_model("vilt-tiny", **{"model.fusion.layers": 2})``; see :func:`vlp.io.factory.create_model`.
    ``pretrained``: a vlp model folder, a transformers or OpenCLIP checkpoint, or a hub model id whose
    sizes and weights are loaded strictly; the recipe name then says which model family is expected
    (see :func:`vlp.io.folders.from_pretrained`).
    """
    if pretrained is not None:
        from vlp.io.folders import from_pretrained

        return from_pretrained(pretrained, name_or_recipe, **overrides)
    from vlp.io.factory import create_model as _create

    return _create(name_or_recipe, **overrides)


def list_models() -> list[str]:
    """The built-in model recipes."""
    from vlp.io.factory import list_models as _list

    return _list()


def load(folder: Any, device: Any = "cpu") -> Any:
    """The model saved by :func:`save_pretrained` in ``folder`` (weights loaded strictly, eval mode)."""
    from vlp.io.saving import load as _load

    return _load(folder, device)


def load_tokenizer(folder: Any) -> Any:
    """The tokenizer saved beside a model's weights."""
    from vlp.io.saving import load_tokenizer as _load_tokenizer

    return _load_tokenizer(folder)


def load_preprocess(folder: Any) -> Any:
    """The image transform saved with a model (PIL image -> (3, H, W) tensor)."""
    from vlp.interop.preprocess import load_preprocess as _load_preprocess

    return _load_preprocess(folder)


def save_pretrained(model: Any, folder: Any, recipe: Any = None, tokenizer: Any = None, overwrite: bool = False) -> Any:
    """Write ``model.safetensors``, ``recipe.yaml`` and the tokenizer into ``folder`` atomically."""
    from vlp.io.saving import save_pretrained as _save

    return _save(model, folder, recipe=recipe, tokenizer=tokenizer, overwrite=overwrite)


__all__ = [
    "Batch",
    "__version__",
    "create_model",
    "list_models",
    "load",
    "load_preprocess",
    "load_tokenizer",
    "save_pretrained",
]
