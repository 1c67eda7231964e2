"""Recipes: typed loading, dotted overrides and the errors users see."""

from dataclasses import dataclass, field
from typing import ClassVar

import pytest

from vlp.config import ConfigError, Family, apply_overrides, from_dict, part, to_dict
from vlp.recipe import parse_recipe


class ShapeConfig(Family):
    members: ClassVar[dict[str, type]] = {}


@part(ShapeConfig, "box", dict)
@dataclass
class BoxConfig(ShapeConfig):
    type: str = "box"
    side: int = 1


@dataclass
class Outer:
    name: str = "x"
    rate: float = 0.1
    sizes: list[int] = field(default_factory=list)
    shape: ShapeConfig | None = None


def test_nested_family_is_resolved_by_type():
    cfg = from_dict(Outer, {"shape": {"type": "box", "side": 3}, "rate": 1, "sizes": [1, 2]})
    assert isinstance(cfg.shape, BoxConfig) and cfg.shape.side == 3
    assert cfg.rate == 1.0 and isinstance(cfg.rate, float)
    assert from_dict(Outer, to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    "data, message",
    [
        ({"rat": 1}, r"Outer\.rat: unknown key; allowed keys: name, rate, shape, sizes"),
        ({"rate": "fast"}, r"Outer\.rate: expected a number, got 'fast'"),
        ({"sizes": [1, "two"]}, r"Outer\.sizes\[1\]: expected an integer"),
        ({"shape": {"type": "blob"}}, r"Outer\.shape\.type: unknown ShapeConfig 'blob'; allowed: box"),
        ({"shape": {"type": "box", "sid": 2}}, r"Outer\.shape\.sid: unknown key; allowed keys: side, type"),
        ({"name": True}, r"Outer\.name: expected a string"),
    ],
)
def test_errors_name_the_key_and_what_was_expected(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Outer, data)


def test_yaml_exponent_without_dot_reads_as_float():
    assert from_dict(Outer, {"rate": "1e-4"}).rate == pytest.approx(1e-4)


def test_dotted_overrides_parse_yaml_values():
    data = apply_overrides({"a": {"b": 1}}, ["a.b=4", "a.c=[1, 2]", "d.e=true", "f=1.5e-3"])
    assert data == {"a": {"b": 4, "c": [1, 2]}, "d": {"e": True}, "f": 1.5e-3}
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides({}, ["a.b"])
    with pytest.raises(ConfigError, match="not a mapping"):
        apply_overrides({"a": 3}, ["a.b=1"])


def test_recipe_typo_names_the_dotted_key():
    with pytest.raises(ConfigError, match=r"recipe\.optim\.lrr: unknown key; allowed keys: .*\blr\b"):
        parse_recipe({"model": {"name": "x"}}, ["optim.lrr=0.1"])
    with pytest.raises(ConfigError, match=r"recipe\.train\.steps: expected an integer"):
        parse_recipe({"model": {"name": "x"}}, ["train.steps=many"])
    assert parse_recipe({"model": {"name": "x"}}, ["optim.lr=3e-4"]).optim.lr == pytest.approx(3e-4)
