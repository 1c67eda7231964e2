"""Build a model from a recipe: a built-in recipe name, a recipe file, a ``Recipe``, a recipe
mapping or a bare ``ModelConfig``, with dotted overrides. The model remembers its recipe
(``model.recipe``) so that :func:`vlp.io.saving.save_pretrained` can store it."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import vlp.parts  # noqa: F401  registers every part type, so that recipes' type keys resolve
from vlp.config import from_dict, set_dotted, to_dict
from vlp.models.config import ModelConfig
from vlp.models.model import VisionLanguageModel
from vlp.recipe import Recipe, parse_recipe, recipe_dict, recipe_names

RECIPE_SECTIONS = ("model", "data", "objectives", "optim", "schedule", "train")


def apply_model_overrides(data: dict[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """``data`` with dotted ``overrides`` set in place; a key that names no recipe section is read under ``model.``."""
    for key, value in (overrides or {}).items():
        set_dotted(data, key if key.split(".")[0] in RECIPE_SECTIONS else f"model.{key}", value)
    return data


def build_model(data: Mapping[str, Any], overrides: Mapping[str, Any] | None = None, where: str = "recipe") -> Any:
    """The model of a recipe mapping (not modified) with ``overrides``; errors name ``where``."""
    recipe = parse_recipe(apply_model_overrides(copy.deepcopy(dict(data)), overrides), where=where)
    model = VisionLanguageModel(recipe.model)
    model.recipe = recipe
    return model


def create_model(name_or_recipe: str | Path | Recipe | Mapping[str, Any] | ModelConfig, **overrides: Any) -> Any:
    """Build a model from a built-in recipe name, a recipe file, a ``Recipe``, a recipe mapping or a ``ModelConfig``.

    ``overrides`` are dotted keys, e.g. ``create_model("vilt-tiny", **{"model.fusion.layers": 2})``;
    keys that do not start with a recipe section (``model``, ``data``, ...) are read under
    ``model.`` (``fusion.layers=2`` works too). Values are plain Python data. Weights from a
    checkpoint: :func:`vlp.create_model` with ``pretrained=`` (see :func:`vlp.io.folders.from_pretrained`).
    """
    if isinstance(name_or_recipe, ModelConfig):
        data = apply_model_overrides({"model": to_dict(name_or_recipe)}, overrides)
        return VisionLanguageModel(from_dict(ModelConfig, data["model"], "model"))
    if isinstance(name_or_recipe, Recipe):
        return build_model(to_dict(name_or_recipe), overrides)
    if isinstance(name_or_recipe, Mapping):
        return build_model(name_or_recipe, overrides)
    if isinstance(name_or_recipe, (str, Path)):
        return build_model(recipe_dict(name_or_recipe), overrides, Path(str(name_or_recipe)).stem)
    kind = type(name_or_recipe).__name__
    raise TypeError(f"create_model: expected a recipe name/path, Recipe, mapping or ModelConfig, got {kind}")


def list_models() -> list[str]:
    """The built-in model recipes (``vlp info`` lists them with a line each)."""
    return recipe_names()


__all__ = ["RECIPE_SECTIONS", "apply_model_overrides", "build_model", "create_model", "list_models"]
