"""Save and load a model folder: ``model.safetensors`` + ``recipe.yaml`` + tokenizer files.

Loading rebuilds the model from ``recipe.yaml`` and fills it from the safetensors file
strictly: every parameter and persistent buffer must be there with its shape, and nothing
else. Nothing is ever unpickled. Tensors that are the same tensor in the model (tied
embeddings, BLIP's shared encoder/decoder modules) are stored once, under the first name
``state_dict()`` gives them; the other names are recorded in the file's metadata.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

import vlp.parts  # noqa: F401  registers every part type, so that recipes' type keys resolve
from vlp.config import ConfigError, from_dict, read_yaml, to_dict
from vlp.io.factory import apply_model_overrides
from vlp.models.config import ModelConfig
from vlp.models.model import VisionLanguageModel
from vlp.recipe import parse_recipe
from vlp.text import Tokenizer

WEIGHTS_NAME = "model.safetensors"
RECIPE_NAME = "recipe.yaml"
RUN_ONLY_KEYS = ("task", "init")  # recipe keys a fine-tuning run adds on top of a model recipe


class CheckpointError(ConfigError):
    """A weights file that is missing, truncated, or does not fit the model.

    A ConfigError (hence a ValueError): bad input that the ``vlp`` command reports as one line naming
    the file, with exit code 2, like any other bad path or value."""


def _tensor_key(t: torch.Tensor) -> tuple:
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)


def canonical_state(model: nn.Module, copy: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors, aliases)``: the state dict with each shared tensor once, and alias -> kept name.

    With ``copy`` the tensors are ready for safetensors (contiguous; a second *view* of an
    already stored storage is cloned, since safetensors refuses overlapping memory);
    without it they are the state dict's own tensors (for loading into).
    """
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    storages: set[int] = set()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach()
        key = _tensor_key(tensor) if tensor.numel() else None
        if key is not None and key in seen:
            aliases[name] = seen[key]
            continue
        if key is not None:
            seen[key] = name
        if copy:
            tensor = tensor.clone().contiguous() if key is not None and key[0] in storages else tensor.contiguous()
        if key is not None:
            storages.add(key[0])
        tensors[name] = tensor
    return tensors, aliases


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_pretrained(
    model: nn.Module,
    folder: str | Path,
    recipe: Any = None,
    tokenizer: Any = None,
    overwrite: bool = False,
) -> Path:
    """Write ``folder/{model.safetensors, recipe.yaml}`` and the tokenizer's files, atomically.

    ``recipe`` (a :class:`vlp.recipe.Recipe`) defaults to ``model.recipe`` (set by
    :func:`vlp.create_model`); its ``model`` section is always the model's own config. Everything
    is written into a temporary sibling folder that is renamed into place, so a crash never
    leaves a half-written checkpoint. A non-empty ``folder`` is refused unless ``overwrite``.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder}: exists and is not a folder")
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise FileExistsError(f"{folder}: folder is not empty; pass overwrite=True to replace it")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a checkpoint folder should look ordinary
        tensors, aliases = canonical_state(model)
        metadata = {"format": "pt", "aliases": json.dumps(aliases, sort_keys=True)}
        save_file({k: v.cpu() for k, v in tensors.items()}, str(tmp / WEIGHTS_NAME), metadata=metadata)
        recipe = recipe if recipe is not None else getattr(model, "recipe", None)
        data = to_dict(recipe) if recipe is not None else {}
        data["model"] = to_dict(model.cfg)
        (tmp / RECIPE_NAME).write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        if tokenizer is not None:
            tokenizer.save(tmp)
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old-{uuid.uuid4().hex[:8]}")
            folder.rename(old)
            tmp.rename(folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def check_weights_file(path: str | Path) -> None:
    """Read the safetensors header ourselves so that truncation gets a message that says so
    (raises :class:`CheckpointError` naming ``path``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: not a safetensors file or truncated ({size} bytes)")
        header_len = int.from_bytes(head, "little")
        if 8 + header_len > size:
            raise CheckpointError(
                f"{path}: truncated or not a safetensors file: the header needs {header_len} bytes, "
                f"the file has {size - 8} after the length prefix"
            )
        try:
            header = json.loads(handle.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{path}: not a safetensors file (header is not JSON: {err})") from err
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file (header is not a JSON object)")
    try:
        data_end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (KeyError, TypeError, IndexError, ValueError) as err:
        raise CheckpointError(f"{path}: not a safetensors file (a header entry has no data_offsets: {err})") from err
    if 8 + header_len + data_end > size:
        raise CheckpointError(
            f"{path}: truncated: the header describes {data_end} bytes of tensor data, "
            f"the file holds {size - 8 - header_len}"
        )


def _names(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Fill ``model`` from a safetensors file, strictly (missing/unexpected keys or shapes -> CheckpointError)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    check_weights_file(path)
    try:
        loaded = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot read safetensors file: {err}") from err
    return load_state_strictly(model, loaded, path)


def load_state_strictly(model: nn.Module, weights: dict[str, torch.Tensor], source: str | Path) -> nn.Module:
    """Fill ``model`` from ``weights``: every parameter and persistent buffer must be there with its shape, and
    nothing else (a :class:`CheckpointError` naming ``source`` and the keys otherwise). A tensor the model
    shares under several names (tied weights) may come under any of them, or under all."""
    expected, aliases = canonical_state(model, copy=False)
    loaded = dict(weights)
    for alias, kept in aliases.items():  # files keep a shared tensor once; checkpoints restore every name
        value = loaded.pop(alias, None)
        if value is not None and kept not in loaded:
            loaded[kept] = value
    missing = sorted(set(expected) - set(loaded))
    unexpected = sorted(set(loaded) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_names(unexpected)}")
        raise CheckpointError(f"{source}: does not fit the model: " + "; ".join(parts))
    bad = [
        f"{k} {tuple(loaded[k].shape)} vs model {tuple(t.shape)}"
        for k, t in expected.items()
        if loaded[k].shape != t.shape
    ]
    if bad:
        raise CheckpointError(f"{source}: shape mismatch: {_names(bad)}")
    with torch.no_grad():
        for name, target in expected.items():
            target.copy_(loaded[name])  # state_dict tensors alias the parameters, so this loads them
    return model


def load_config(
    folder: str | Path, overrides: dict[str, Any] | None = None, data: dict[str, Any] | None = None
) -> tuple[Any, Any]:
    """``(ModelConfig, Recipe or None)`` from ``folder/recipe.yaml`` with dotted ``overrides`` (keys outside a
    recipe section are read under ``model.``); errors name the file. A fine-tuning run's own keys
    (:data:`RUN_ONLY_KEYS`) are left out: they say how the model was trained, not what it is.
    ``data``: the file's contents, when the caller has read them already."""
    path = Path(folder) / RECIPE_NAME
    if data is None:
        data = read_yaml(path)
    if "model" not in data:
        raise ConfigError(f"{path}: has no 'model' section")
    data = apply_model_overrides({k: v for k, v in data.items() if k not in RUN_ONLY_KEYS}, overrides)
    if set(data) - {"model"}:
        recipe = parse_recipe(data, where=str(path))
        return recipe.model, recipe
    return from_dict(ModelConfig, data["model"], f"{path}:model"), None


def build_saved_model(
    folder: str | Path, overrides: dict[str, Any] | None = None, data: dict[str, Any] | None = None
) -> VisionLanguageModel:
    """The model ``folder/recipe.yaml`` describes (weights not loaded), remembering its recipe (None when the
    file holds only a ``model`` section) -- the one way a model, run or checkpoint folder's model is rebuilt.
    ``data``: the file's contents, when the caller has read them already (see :func:`load_config`)."""
    cfg, recipe = load_config(folder, overrides, data)
    model = VisionLanguageModel(cfg)
    model.recipe = recipe
    return model


def load(folder: str | Path, device: str | torch.device = "cpu", overrides: dict[str, Any] | None = None) -> nn.Module:
    """Rebuild the model saved in ``folder`` and load its weights strictly; returned in eval mode.

    ``overrides``: dotted recipe keys (see :func:`load_config`); one that changes a weight's shape makes the
    strict load fail naming it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: model folder not found")
    model = build_saved_model(folder, overrides)
    load_weights(model, folder / WEIGHTS_NAME)
    return model.to(device).eval()


def has_tokenizer(folder: str | Path) -> bool:
    """Whether ``folder`` holds tokenizer files (``tokenizer.json`` / ``vocab.txt``, or CLIP's ``vocab.json``)."""
    return any((Path(folder) / name).is_file() for name in ("tokenizer.json", "vocab.txt", "vocab.json"))


def load_tokenizer(path: str | Path, who: str | None = None) -> Any:
    """The tokenizer of a folder (saved beside the weights) or file: WordPiece ``tokenizer.json`` / ``vocab.txt``,
    or CLIP's BPE files (a :class:`vlp.text.bpe.ClipTokenizer`). The one implementation behind
    ``vlp.load_tokenizer`` and :func:`vlp.io.folders.load_tokenizer`.

    A missing or unreadable tokenizer is a :class:`ConfigError` naming the path and what was expected, prefixed
    with ``who`` (the option that named it, e.g. ``--tokenizer``) when given."""
    try:
        return Tokenizer.load(path)
    except (OSError, ValueError) as err:
        prefix = f"{who}: " if who else ""
        raise ConfigError(f"{prefix}cannot load a tokenizer from {str(path)!r}: {err}") from err


__all__ = [
    "RECIPE_NAME",
    "RUN_ONLY_KEYS",
    "WEIGHTS_NAME",
    "CheckpointError",
    "build_saved_model",
    "canonical_state",
    "check_weights_file",
    "has_tokenizer",
    "load",
    "load_config",
    "load_state_strictly",
    "load_tokenizer",
    "load_weights",
    "save_pretrained",
]
