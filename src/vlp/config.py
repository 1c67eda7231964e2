"""Typed configuration: plain dicts (YAML) <-> dataclasses, with clear errors.

Every config in vlp is a dataclass. `from_dict` validates a nested dict against
it and names the offending dotted key, the allowed keys or the expected type
when something is wrong. Interchangeable parts (a patch vs a region visual
encoder, say) are *families*: a base class whose concrete dataclass is chosen by
the dict's ``type`` key, so a recipe only has to name the part it wants. A
*keyed* family (:class:`KeyedFamily`: heads, objectives) is the same registry
where a mapping's keys choose the members: ``heads: {itm: {}, vqa: {num_answers: 3}}``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A recipe or config value that does not fit its schema."""


class Family:
    """Base of a family of part configs chosen by their ``type`` key.

    A family is declared as ``class VisionConfig(Family): members = {}`` and a
    member as a dataclass subclass registered with ``@VisionConfig.register("patch")``.
    The member's ``builds`` attribute (set by :func:`part`) is the module class
    that takes the config as its only constructor argument.
    """

    members: ClassVar[dict[str, type]]
    builds: ClassVar[Callable[..., Any] | None] = None

    @classmethod
    def register(cls, name: str) -> Callable[[type[T]], type[T]]:
        def decorate(member: type[T]) -> type[T]:
            if name in cls.members and cls.members[name] is not member:
                raise ConfigError(f"{cls.__name__} type {name!r} is registered twice")
            cls.members[name] = member
            return member

        return decorate

    @classmethod
    def member(cls, name: str, where: str = "") -> type:
        if name not in cls.members:
            allowed = ", ".join(sorted(cls.members)) or "(none registered)"
            raise ConfigError(f"{where or cls.__name__}.type: unknown {cls.__name__} {name!r}; allowed: {allowed}")
        return cls.members[name]


class KeyedFamily(Family, Mapping):
    """Base of a family whose members are chosen by their key in a mapping of several.

    A field typed ``dict[str, HeadConfig]`` reads ``{itm: {}, vqa: {num_answers: 3}}``: each key
    names a member, its value holds that member's options (null = every default). Members are
    ``@dataclass(eq=False)`` subclasses registered with :func:`part`, like every family member.

    A member also reads like the plain mapping it was parsed from (``cfg["hidden"]``, ``dict(cfg)``,
    ``cfg == {"num_answers": 3}``), so code written when these sections were plain dicts keeps working.
    Every option can be read by key; iterating gives the keys of the saved form (see ``save_defaults``).
    """

    noun: ClassVar[str] = "member"  # what errors call a member: "unknown head 'itc'"
    # True: the saved form writes every option, so a default changed later cannot change a saved run.
    # False: it writes the keys the recipe gave plus any option that differs from its default, so a
    # saved file reads back and saves again unchanged.
    save_defaults: ClassVar[bool] = True
    _given: ClassVar[tuple[str, ...]] = ()  # set per instance by parse(): the keys the recipe gave

    @classmethod
    def register(cls, name: str) -> Callable[[type[T]], type[T]]:
        def decorate(member: type[T]) -> type[T]:
            if not (isinstance(member, type) and issubclass(member, cls)):
                raise ConfigError(f"{member.__name__}: a {cls.__name__} member must subclass {cls.__name__}")
            if member.__eq__ is not KeyedFamily.__eq__:  # type: ignore[comparison-overlap]
                raise ConfigError(
                    f"{member.__name__}: declare it @dataclass(eq=False), so that it compares with the mapping "
                    "it was parsed from"
                )
            return super(KeyedFamily, cls).register(name)(member)

        return decorate

    @classmethod
    def parse(cls, name: str, options: Any, where: str) -> KeyedFamily:
        """Member ``name`` with ``options`` (a mapping, None or a member); errors name ``where.name``."""
        if name not in cls.members:
            allowed = ", ".join(sorted(cls.members)) or "(none registered)"
            raise ConfigError(f"{where}.{name}: unknown {cls.noun} {name!r}; allowed: {allowed}")
        member = cls.members[name]
        if isinstance(options, member):
            return options
        config = from_dict(member, options, f"{where}.{name}")
        config._given = tuple(options or ())
        return config

    @classmethod
    def parse_all(cls, data: Any, where: str) -> dict[str, Any]:
        """``{name: member}`` from a mapping of member name -> options."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected a mapping of {cls.noun} name -> options, got {data!r}")
        return {str(name): cls.parse(str(name), options, where) for name, options in data.items()}

    def _options(self) -> list[dataclasses.Field]:
        return [f for f in dataclasses.fields(self) if f.init]  # type: ignore[arg-type]

    def _saved_keys(self) -> list[str]:
        options = self._options()
        if self.save_defaults:
            return [f.name for f in options]
        names = {f.name for f in options}
        given = [n for n in self._given if n in names]
        return given + [f.name for f in options if f.name not in given and not _at_default(self, f)]

    def __getitem__(self, key: str) -> Any:
        if key not in {f.name for f in self._options()}:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Any:
        return iter(self._saved_keys())

    def __len__(self) -> int:
        return len(self._saved_keys())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, KeyedFamily):
            return type(other) is type(self) and all(getattr(self, f.name) == getattr(other, f.name) for f in
                                                     self._options())  # fmt: skip
        if isinstance(other, Mapping):
            return dict(self.items()) == dict(other.items())
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable, like every config


def _at_default(config: Any, f: dataclasses.Field) -> bool:
    if f.default is not dataclasses.MISSING:
        return getattr(config, f.name) == f.default
    if f.default_factory is not dataclasses.MISSING:
        return getattr(config, f.name) == f.default_factory()
    return False  # a required option is always written


def part(family: type[Family], name: str, module_cls: Callable[..., Any]) -> Callable[[type[T]], type[T]]:
    """Register a config dataclass as family member ``name`` that builds ``module_cls``.

    ``module_cls`` takes the config as its only argument (:func:`build`), except for heads, whose
    builder also takes the model's widths: ``builder(cfg, ctx)`` (:func:`vlp.models.heads.build_heads`).
    """

    def decorate(config_cls: type[T]) -> type[T]:
        config_cls.builds = module_cls  # type: ignore[attr-defined]
        return family.register(name)(config_cls)

    return decorate


def build(config: Any) -> Any:
    """Instantiate the module a family config describes."""
    module_cls = getattr(config, "builds", None)
    if module_cls is None:
        raise ConfigError(f"{type(config).__name__} does not name a module to build")
    return module_cls(config)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: expected one of {list(args)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        val_tp = args[1] if args else Any
        if isinstance(val_tp, type) and issubclass(val_tp, KeyedFamily):
            return val_tp.parse_all(value, where)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): _convert(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, Family) and "members" in tp.__dict__:
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping) or "type" not in value:
            raise ConfigError(f"{where}: expected a mapping with a 'type' key ({', '.join(sorted(tp.members))})")
        member = tp.member(value["type"], where)
        if "type" not in {f.name for f in dataclasses.fields(member)}:
            # the ``type`` key chose the member; members need not declare it as a field
            value = {k: v for k, v in value.items() if k != "type"}
        return from_dict(member, value, where)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, where)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    return value


def from_dict(cls: type[T], data: Mapping[str, Any] | None, where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; every error names the dotted key."""
    where = where or cls.__name__
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key; allowed keys: {', '.join(sorted(fields)) or '(none)'}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(value, hints[name], f"{where}.{name}")
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{where}.{missing[0]}: required key is missing")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from err


def family_name(config: Any) -> str | None:
    """The ``type`` name under which ``config``'s class is registered in a family, if any."""
    for cls in type(config).__mro__:
        if isinstance(cls, type) and issubclass(cls, Family) and "members" in cls.__dict__:
            for name, member in cls.members.items():
                if member is type(config):
                    return name
    return None


def to_dict(config: Any) -> Any:
    """Plain-data form of a config (round-trips through :func:`from_dict`)."""
    if isinstance(config, KeyedFamily):
        return {key: to_dict(config[key]) for key in config}
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        data = {}
        for f in dataclasses.fields(config):
            if f.init:
                value = getattr(config, f.name)
                data[f.name] = to_dict(value)
                # a family-typed field is read back through its ``type`` key; members need not declare it
                keyed = isinstance(value, KeyedFamily)  # chosen by its key in a mapping, not by ``type``
                name = family_name(value) if dataclasses.is_dataclass(value) and not keyed else None
                if name is not None and "type" not in data[f.name]:
                    data[f.name] = {"type": name, **data[f.name]}
        return data
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    if isinstance(config, Mapping):
        return {k: to_dict(v) for k, v in config.items()}
    return config


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c = value`` inside nested dicts, creating levels as needed."""
    keys = dotted.split(".")
    node = data
    for i, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(keys[: i + 1])}: is {child!r}, not a mapping, so {dotted} cannot be set")
        node = child
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``'model.fusion.layers=4'`` -> ``('model.fusion.layers', 4)``; the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. model.fusion.layers=4")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({err})") from err
    return key.strip(), value


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    for text in overrides or []:
        key, value = parse_override(text)
        set_dotted(data, key, value)
    return data


def read_yaml(path: str | Any) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except FileNotFoundError as err:
        raise ConfigError(f"{path}: file not found") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a YAML mapping at the top level, got {type(data).__name__}")
    return data
