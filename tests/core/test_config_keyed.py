"""Keyed families: a mapping's keys choose the members (``heads: {itm: {}, vqa: {num_answers: 3}}``),
through the same registry (``members``, :func:`part`) as the ``type``-keyed families."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import pytest
import yaml

from vlp.config import ConfigError, KeyedFamily, build, from_dict, part, to_dict


class ToolConfig(KeyedFamily):
    members: ClassVar[dict[str, type]] = {}
    noun: ClassVar[str] = "tool"
    save_defaults: ClassVar[bool] = False


class Saw:
    def __init__(self, cfg: SawConfig) -> None:
        self.cfg = cfg


@part(ToolConfig, "saw", Saw)
@dataclass(eq=False)
class SawConfig(ToolConfig):
    teeth: int = 24
    blade: str = "rip"


@part(ToolConfig, "drill", dict)
@dataclass(eq=False)
class DrillConfig(ToolConfig):
    """No options."""


class WeightConfig(KeyedFamily):
    members: ClassVar[dict[str, type]] = {}
    noun: ClassVar[str] = "weight"


@part(WeightConfig, "a", dict)
@dataclass(eq=False)
class AConfig(WeightConfig):
    weight: float = 1.0
    seed: int | None = None


@dataclass
class Workshop:
    tools: dict[str, ToolConfig] = field(default_factory=dict)
    weights: dict[str, WeightConfig] = field(default_factory=dict)


def test_the_key_chooses_the_member_and_options_are_typed():
    shop = from_dict(Workshop, {"tools": {"saw": {"teeth": 30}, "drill": None}, "weights": {"a": {}}})
    assert isinstance(shop.tools["saw"], SawConfig) and shop.tools["saw"].teeth == 30
    assert shop.tools["saw"].blade == "rip"  # the default
    assert isinstance(shop.tools["drill"], DrillConfig)  # a null entry takes every default
    assert isinstance(build(shop.tools["saw"]), Saw) and build(shop.tools["saw"]).cfg is shop.tools["saw"]
    assert from_dict(Workshop, {"tools": shop.tools}).tools["saw"] is shop.tools["saw"]  # typed values pass through


@pytest.mark.parametrize(
    "data, message",
    [
        ({"tools": {"hammer": {}}}, "Workshop.tools.hammer: unknown tool 'hammer'; allowed: drill, saw"),
        ({"tools": {"saw": {"teath": 3}}}, "Workshop.tools.saw.teath: unknown key; allowed keys: blade, teeth"),
        ({"tools": {"drill": {"speed": 3}}}, "Workshop.tools.drill.speed: unknown key; allowed keys: (none)"),
        ({"tools": {"saw": {"teeth": "many"}}}, "Workshop.tools.saw.teeth: expected an integer, got 'many'"),
        ({"tools": {"saw": 3}}, "Workshop.tools.saw: expected a mapping, got 3"),
        ({"tools": ["saw"]}, "Workshop.tools: expected a mapping of tool name -> options, got ['saw']"),
    ],
)
def test_errors_name_the_dotted_key_and_what_is_allowed(data, message):
    with pytest.raises(ConfigError) as err:
        from_dict(Workshop, data)
    assert str(err.value) == message


def test_saved_form_is_what_was_written_or_every_option():
    written = {"tools": {"saw": {"blade": "rip"}, "drill": {}}, "weights": {"a": {"weight": 2.0}}}
    shop = from_dict(Workshop, written)
    plain = to_dict(shop)
    # ToolConfig saves the keys the recipe gave (even a default), so a saved file reads back unchanged
    assert plain["tools"] == {"saw": {"blade": "rip"}, "drill": {}}
    # WeightConfig (save_defaults, the default) writes every option
    assert plain["weights"] == {"a": {"weight": 2.0, "seed": None}}
    again = to_dict(from_dict(Workshop, plain))
    assert yaml.safe_dump(again, sort_keys=False) == yaml.safe_dump(plain, sort_keys=False)
    # built in Python or changed after parsing: the options that differ from their defaults are saved too
    shop.tools["saw"].teeth = 10
    assert to_dict(shop)["tools"]["saw"] == {"blade": "rip", "teeth": 10}
    assert to_dict(SawConfig(teeth=12)) == {"teeth": 12}


def test_options_read_like_the_mapping_they_were_parsed_from():
    saw = from_dict(Workshop, {"tools": {"saw": {"teeth": 30}}}).tools["saw"]
    assert dict(saw) == {"teeth": 30} and saw == {"teeth": 30}
    assert saw["blade"] == "rip" and saw.get("blade") == "rip" and saw.get("handle", 0) == 0  # every option reads
    with pytest.raises(KeyError):
        saw["handle"]
    assert from_dict(SawConfig, saw) == saw  # what code written for the dict form does keeps working
    assert SawConfig(teeth=30) == SawConfig(teeth=30) != SawConfig(teeth=31)
    assert AConfig() == {"weight": 1.0, "seed": None}
    assert DrillConfig() != {"teeth": 24} and SawConfig() != DrillConfig()


def test_members_must_subclass_the_family_and_compare_as_mappings():
    with pytest.raises(ConfigError, match="KnifeConfig: a ToolConfig member must subclass ToolConfig"):

        @part(ToolConfig, "knife", dict)
        @dataclass(eq=False)
        class KnifeConfig:
            edge: int = 1

    with pytest.raises(ConfigError, match=r"PlaneConfig: declare it @dataclass\(eq=False\)"):

        @part(ToolConfig, "plane", dict)
        @dataclass
        class PlaneConfig(ToolConfig):
            width: int = 1

    assert set(ToolConfig.members) == {"saw", "drill"}
