"""What every checkpoint converter shares: reading folders, and strict renaming of state dicts.

A converter describes its model with a *table*: ``vlp name -> (source names, ...)``. A vlp
name is a full parameter name (``vision.cls_token``) or a module path (``text.layers.0.attn.qkv``),
in which case every parameter leaf under it (``weight``, ``bias``, BatchNorm statistics) maps to
the same leaf of the source modules. Several sources are concatenated along dim 0 (separate
``query``/``key``/``value`` -> vlp's fused ``qkv``); on export the vlp tensor is split back into
equal chunks. Shapes that differ only by size-1 axes (CLIP's class embedding ``(D,)`` vs vlp's
``cls_token (1, 1, D)``) are reshaped; any other shape difference is an error.

Loading is strict in both directions: a vlp parameter without a source tensor (*missing*) and
a source tensor that nothing reads (*unexpected*) are a :class:`ConversionError` that lists their
names. The only tensors skipped on purpose are the non-weight buffers of :data:`BUFFER_SUFFIXES`
(``position_ids`` / ``token_type_ids``: ``arange`` and zeros that old transformers versions
saved), BatchNorm's ``num_batches_tracked`` counter when a checkpoint lacks it (it changes no
output), and, per model, tied duplicates that must equal the tensor they duplicate.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlp.interop.bert import read_state_dict

# Buffers (not weights) that transformers checkpoints may contain: position ids are ``arange``,
# ViLT's token type ids are zeros. Nothing in vlp needs them; they are the only names skipped.
BUFFER_SUFFIXES = ("position_ids", "embeddings.token_type_ids")
# vlp buffers a checkpoint may lack without changing any output: BatchNorm's step counter is
# only read when momentum is None (never in CLIP's ResNet), so it keeps its value when absent.
OPTIONAL_SUFFIXES = ("num_batches_tracked",)


class ConversionError(ValueError):
    """A checkpoint that cannot be converted faithfully (missing/unexpected weights, unsupported options)."""


def listing(names: Iterable[str], limit: int = 15) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def read_json(path: str | Path, what: str) -> dict[str, Any]:
    """A JSON object from ``path``; errors name the file and what it should have been."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; expected {what}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConversionError(f"{path}: is not valid JSON ({err}); expected {what}") from err
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: expected a JSON object ({what}), got {type(data).__name__}")
    return data


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint folder or file (safetensors, sharded index, or ``.bin``/``.pt`` read
    with ``torch.load(weights_only=True)``, never with full unpickling)."""
    state = read_state_dict(path)
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ConversionError(f"{path}: entries that are not tensors: {listing(bad)}")
    return state


Table = dict[str, tuple[str, ...]]


def modules(table: Table, ours: str, *theirs: str) -> None:
    """Add ``ours -> theirs`` (module or parameter paths) to ``table``."""
    table[ours] = tuple(theirs)


def sources_of(name: str, table: Table) -> tuple[str, ...] | None:
    """The source names of vlp parameter ``name`` by ``table`` (see the module docstring)."""
    if name in table:
        return table[name]
    module, _, leaf = name.rpartition(".")
    while module:
        if module in table:
            return tuple(f"{src}.{leaf}" for src in table[module])
        module, _, parent_leaf = module.rpartition(".")
        leaf = f"{parent_leaf}.{leaf}"
    return None


def _fits(value: torch.Tensor, shape: torch.Size) -> bool:
    """Same numbers, possibly with size-1 axes added or removed."""
    squeeze = [d for d in value.shape if d != 1]
    return value.numel() == int(torch.Size(shape).numel()) and squeeze == [d for d in shape if d != 1]


@dataclass
class StateMapping:
    """How one model's state maps to a checkpoint's.

    ``table``: vlp name -> source names. ``vlp_only``: vlp parameters the checkpoint's model has no
    counterpart for, with the reason; they keep their deterministic initialization and are listed in
    the conversion report. ``tied``: checkpoint names that duplicate another checkpoint tensor
    (e.g. an LM decoder tied to the word embeddings) and must be equal to it. ``fixed``: vlp-only
    parameters set to a given value (an identity projection where the source has none).
    """

    table: Table
    vlp_only: dict[str, str] = field(default_factory=dict)
    tied: dict[str, str] = field(default_factory=dict)
    fixed: dict[str, torch.Tensor] = field(default_factory=dict)  # vlp-only parameters set to these values


def import_state(
    model: nn.Module, checkpoint: Mapping[str, torch.Tensor], mapping: StateMapping, source: str
) -> dict[str, torch.Tensor]:
    """Fill ``model`` from ``checkpoint`` by ``mapping``; strict. Returns the vlp state that was loaded."""
    checkpoint = dict(checkpoint)
    used: set[str] = set()
    loaded: dict[str, torch.Tensor] = {}
    missing, mismatched, untranslated = [], [], []
    for name, target in model.state_dict().items():
        if name in mapping.fixed:
            loaded[name] = mapping.fixed[name].to(target.dtype).reshape(target.shape)
            continue
        if name in mapping.vlp_only:
            loaded[name] = target
            continue
        sources = sources_of(name, mapping.table)
        if sources is None:
            untranslated.append(name)
            continue
        absent = [s for s in sources if s not in checkpoint]
        if absent and name.endswith(OPTIONAL_SUFFIXES):
            loaded[name] = target
            continue
        if absent:
            missing.extend(a for a in absent if a not in missing)
            continue
        used.update(sources)
        parts = [checkpoint[s] for s in sources]
        value = torch.cat(parts) if len(parts) > 1 else parts[0]
        if value.shape != target.shape:
            if not _fits(value, target.shape):
                mismatched.append(f"{' + '.join(sources)} {tuple(value.shape)} -> {name} {tuple(target.shape)}")
                continue
            value = value.reshape(target.shape)
        loaded[name] = value.to(target.dtype)
    if untranslated:  # a converter table that does not cover its own model is a bug, not a user error
        raise ConversionError(f"internal: no source known for vlp parameters {listing(untranslated)}")
    for dup, original in mapping.tied.items():
        if dup in checkpoint and dup not in used:
            if original not in checkpoint or not torch.equal(checkpoint[dup], checkpoint[original]):
                raise ConversionError(
                    f"{source}: {dup} is expected to be tied to {original} but holds other values; "
                    "vlp's model ties them, so this checkpoint cannot be loaded faithfully"
                )
            used.add(dup)
    skipped = {k for k in checkpoint if k.endswith(BUFFER_SUFFIXES)}
    unexpected = sorted(set(checkpoint) - used - skipped)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {listing(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {listing(unexpected)}")
        raise ConversionError(
            f"{source}: checkpoint does not match the model it describes ({'; '.join(parts)}). "
            "Only position_ids/token_type_ids buffers are skipped; nothing is left at random initialization"
        )
    if mismatched:
        raise ConversionError(f"{source}: shapes do not match: {listing(mismatched, 8)}")
    model.load_state_dict(loaded, strict=True)
    return loaded


def export_state(model: nn.Module, mapping: StateMapping, shapes: Mapping[str, torch.Size]) -> dict[str, torch.Tensor]:
    """The checkpoint-side state of ``model``: names of ``mapping``, shapes of ``shapes`` (the target model's).

    Two vlp tensors that map to one source name (tied there) must be equal, else the export would
    silently pick one: that is a :class:`ConversionError`.
    """
    out: dict[str, torch.Tensor] = {}
    for name, value in model.state_dict().items():
        if name in mapping.vlp_only or name in mapping.fixed:
            continue
        sources = sources_of(name, mapping.table)
        if sources is None:
            raise ConversionError(f"internal: no target known for vlp parameter {name}")
        chunks = value.detach().chunk(len(sources), dim=0) if len(sources) > 1 else (value.detach(),)
        for src, chunk in zip(sources, chunks):
            if src not in shapes:
                raise ConversionError(f"internal: {name} maps to {src}, which the target model does not have")
            shape = shapes[src]
            if chunk.shape != shape:
                if not _fits(chunk, shape):
                    raise ConversionError(f"{name} {tuple(chunk.shape)} does not fit {src} {tuple(shape)}")
                chunk = chunk.reshape(shape)
            if src in out and not torch.equal(out[src], chunk):
                raise ConversionError(
                    f"{src} is one tensor in the target model but vlp's copies differ ({name}); "
                    "they were trained apart, so the export would not be faithful"
                )
            out[src] = chunk.clone().contiguous()
    return out


class Converter:
    """One model family's translation between transformers checkpoints and vlp models.

    Subclasses name the transformers ``architectures`` and ``model_types`` they read, the built-in
    ``recipe`` whose data/objective/optimizer sections a converted folder gets, and implement the
    config translation both ways and the weight table (:class:`StateMapping`).
    """

    family: str = ""
    recipe: str = ""
    architectures: tuple[str, ...] = ()
    model_types: tuple[str, ...] = ()

    def model_section(self, config: dict[str, Any], architecture: str) -> dict[str, Any]:
        """transformers ``config.json`` -> the ``model`` section of a vlp recipe (plain data)."""
        raise NotImplementedError

    def mapping(self, model: nn.Module, architecture: str) -> StateMapping:
        """vlp parameter names of ``model`` -> checkpoint names of ``architecture``."""
        raise NotImplementedError

    def matches(self, cfg: Any) -> bool:
        """Whether a vlp ``ModelConfig`` has this family's structure (export detection)."""
        raise NotImplementedError

    def architecture(self, cfg: Any) -> str:
        """The transformers class a vlp ``ModelConfig`` of this family exports to."""
        raise NotImplementedError

    def hf_config(self, cfg: Any, base: dict[str, Any], architecture: str) -> dict[str, Any]:
        """vlp ``ModelConfig`` -> transformers ``config.json`` (``base``: the imported one, to keep its extras)."""
        raise NotImplementedError

    def check_export(self, model: nn.Module) -> None:
        """Refuse, before export, weights the target class cannot hold (default: accept)."""

    def prepare(self, state: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Rewrite checkpoint tensors before the table applies (default: unchanged)."""
        return state

    def finish(self, state: dict[str, torch.Tensor], shapes: Mapping[str, torch.Size]) -> dict[str, torch.Tensor]:
        """Add checkpoint tensors that vlp does not keep, after export (default: none)."""
        return state


def get(config: Mapping[str, Any], key: str, default: Any) -> Any:
    """``config[key]`` or ``default`` when absent or null (transformers omits defaults in saved configs)."""
    value = config.get(key)
    return default if value is None else value


def need(condition: bool, message: str) -> None:
    """Refuse a config option vlp cannot reproduce exactly."""
    if not condition:
        raise ConversionError(message)


# transformers activation names -> vlp.layers.activation names
ACTS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "quick_gelu": "quick_gelu"}
ACTS_BACK = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "quick_gelu": "quick_gelu", "relu": "relu"}


def act_of(config: Mapping[str, Any], where: str, default: str = "gelu") -> str:
    name = get(config, "hidden_act", default)
    if name not in ACTS and name != "relu":
        raise ConversionError(f"{where}.hidden_act={name!r} is not supported; expected one of {', '.join(ACTS)}")
    return ACTS.get(name, name)
