"""Classic models as recipes of parts: ``create_model(name)``, ``list_models()``."""

from __future__ import annotations


def list_models() -> list[str]:
    from vlp.recipe import recipe_names

    return recipe_names()
