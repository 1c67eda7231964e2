"""Recipes: YAML files that name a model's parts and sizes, its data, weighted
objectives, optimizer and schedule. Loaded into typed dataclasses so that a typo
fails at once with the key's dotted name and what was allowed."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import vlp.parts  # noqa: F401  registers every part type, so that recipes' type keys resolve
from vlp.config import ConfigError, apply_overrides, from_dict, read_yaml, to_dict
from vlp.data.config import DataConfig
from vlp.models.config import ModelConfig
from vlp.objectives.base import ObjectiveConfig
from vlp.objectives.registry import validate_objectives
from vlp.recipe.run import OptimConfig, ScheduleConfig, TrainConfig

RECIPE_DIR = Path(__file__).parent.parent / "models" / "recipes"
TASK_RECIPE_DIR = Path(__file__).parent.parent / "tasks" / "recipes"


@dataclass
class Recipe:
    model: ModelConfig
    data: DataConfig = field(default_factory=DataConfig)
    # objective name -> its options; every entry takes ``weight`` (see vlp.objectives)
    objectives: dict[str, ObjectiveConfig] = field(default_factory=dict)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        self.objectives = validate_objectives(self.objectives)  # built in Python with plain dicts: typed too


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def task_recipe_names() -> list[str]:
    """Built-in task recipes (``vlp finetune NAME``), e.g. ``vqa-albef-tiny``."""
    return sorted(p.stem for p in TASK_RECIPE_DIR.glob("*.yaml"))


def recipe_description(name_or_path: str | Path) -> str:
    """One line on what a recipe is: the first sentence of its leading comment (up to a ``:``, ``;`` or ``.``)."""
    text = []
    for line in recipe_path(name_or_path).read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        words = line.lstrip("#").strip()
        if words.startswith("vlp ") or not words:  # the usage lines that follow the description
            break
        text.append(words)
    joined = " ".join(text)
    match = re.search(r"[:;]\s|\.\s|\.$", joined)
    return (joined[: match.start()] if match else joined).rstrip(",")


def recipe_path(name_or_path: str | Path) -> Path:
    """A recipe file given its path or the name of a built-in recipe."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise ConfigError(f"{path}: recipe file not found")
        return path
    for folder in (RECIPE_DIR, TASK_RECIPE_DIR):
        builtin = folder / f"{name_or_path}.yaml"
        if builtin.exists():
            return builtin
    raise ConfigError(
        f"unknown recipe {str(name_or_path)!r}; built-in model recipes: {', '.join(recipe_names())}; "
        f"task recipes: {', '.join(task_recipe_names())}"
    )


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and "type" not in value:
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def recipe_dict(name_or_path: str | Path) -> dict[str, Any]:
    """The raw recipe mapping, with ``base: other-recipe`` inheritance resolved."""
    path = recipe_path(name_or_path)
    data = read_yaml(path)
    base = data.pop("base", None)
    if base is not None:
        parent = recipe_dict(base if not (path.parent / f"{base}.yaml").exists() else path.parent / f"{base}.yaml")
        data = _merge(parent, data)
    return data


def parse_recipe(data: dict[str, Any], overrides: list[str] | None = None, where: str = "recipe") -> Recipe:
    data = apply_overrides(copy.deepcopy(data), overrides)
    return from_dict(Recipe, data, where)


def load_recipe(name_or_path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load a recipe by built-in name or path and apply ``KEY=VALUE`` overrides."""
    return parse_recipe(recipe_dict(name_or_path), overrides, where=Path(str(name_or_path)).stem)


def save_recipe(recipe: Recipe, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(recipe), sort_keys=False), encoding="utf-8")
