"""What a path holds, and the model, tokenizer and task settings it gives. Every command and API
call that loads a model comes through here, so this is the one place that knows the layouts:

- a model folder (``save_pretrained``): ``model.safetensors`` + ``recipe.yaml`` + tokenizer files
  (+ ``preprocess.json`` / ``interop.json`` for converted models);
- a run folder (``vlp pretrain`` / ``vlp finetune``): ``recipe.yaml`` + ``checkpoints/step_N/``
  (the newest valid checkpoint is used); a run's weights are those of its training wrapper, so
  the model's are stored under ``model.``; a fine-tuning run's recipe adds ``task`` and ``init``;
- one checkpoint folder ``RUN/checkpoints/step_N`` (the recipe is read from ``RUN``);
- a bare ``.safetensors`` file (weights only, for ``train.init``);
- a transformers folder (``config.json`` + weights), an OpenCLIP file or hub folder
  (``open_clip_config.json``), or a Hugging Face hub model id (``org/name``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vlp.config import ConfigError, read_yaml
from vlp.interop.hf import check_family, detect, is_hf_folder, load_hf
from vlp.interop.hub import resolve
from vlp.interop.openclip import load_openclip
from vlp.interop.openclip_config import is_openclip_folder
from vlp.io.checkpoints import CheckpointManager, load_safetensors
from vlp.io.saving import (
    RECIPE_NAME,
    RUN_ONLY_KEYS,
    WEIGHTS_NAME,
    build_saved_model,
    has_tokenizer,
    load,
    load_state_strictly,
    load_tokenizer,
)

CHECKPOINTS = "checkpoints"
WRAPPER_PREFIX = "model."  # a training run saves its wrapper (Pretraining / a task module); the model sits here


def is_model_folder(folder: Path) -> bool:
    return (folder / RECIPE_NAME).is_file() and (folder / WEIGHTS_NAME).is_file()


def _warn(message: str) -> None:
    print(f"warning: {message}")


def weights_of(path: Path, who: str) -> tuple[Path | None, Path]:
    """``(folder holding the recipe or None, weights file)`` of a model / run / checkpoint folder or a
    ``.safetensors`` file; ``who`` names the option in errors (``--model``, ``init``)."""
    if path.is_file():
        return None, path
    if not path.exists():
        raise ConfigError(f"{who}: {path} does not exist")
    if (path / WEIGHTS_NAME).is_file():
        if (path / RECIPE_NAME).is_file():
            return path, path / WEIGHTS_NAME
        if path.parent.name == CHECKPOINTS and (path.parent.parent / RECIPE_NAME).is_file():
            return path.parent.parent, path / WEIGHTS_NAME  # RUN/checkpoints/step_N
        return None, path / WEIGHTS_NAME
    if (path / CHECKPOINTS).is_dir():
        latest = CheckpointManager(path / CHECKPOINTS).latest_valid(warn=_warn)
        if latest is None:
            raise ConfigError(f"{who}: {path} is a run folder without a valid checkpoint")
        return (path if (path / RECIPE_NAME).is_file() else None), latest / WEIGHTS_NAME
    raise ConfigError(
        f"{who}: {path} holds neither {WEIGHTS_NAME} + {RECIPE_NAME} (save_pretrained) nor a run "
        f"({RECIPE_NAME} + {CHECKPOINTS}/)"
    )


def model_weights(weights: dict[str, torch.Tensor], own: Any) -> dict[str, torch.Tensor]:
    """A run's weights (its wrapper's, under ``model.``) as the model's; a model's weights unchanged."""
    if not any(k in own for k in weights) and any(k.startswith(WRAPPER_PREFIX) for k in weights):
        return {k[len(WRAPPER_PREFIX) :]: v for k, v in weights.items() if k.startswith(WRAPPER_PREFIX)}
    return weights


def tokenizer_for(explicit: Any, folder: Path, recipe: Any = None, init: str | None = None) -> Any:
    """The explicit tokenizer (object or path), else the one saved beside the weights, else the recipe's
    ``model.tokenizer``, else the one saved with a fine-tuning run's ``init`` weights."""
    if explicit is not None and not isinstance(explicit, (str, Path)):
        return explicit
    candidates = [explicit] if explicit else []
    if has_tokenizer(folder):
        candidates.append(folder)
    if recipe is not None and recipe.model.tokenizer:
        candidates.append(recipe.model.tokenizer)
    if init and Path(init).is_dir() and has_tokenizer(Path(init)):
        candidates.append(init)
    if not candidates:
        raise ConfigError(
            f"--tokenizer: {folder} has no tokenizer files, its recipe names no model.tokenizer and its init "
            "folder has none either; pass --tokenizer"
        )
    return load_tokenizer(candidates[0], "--tokenizer")


@dataclass
class LoadedModel:
    """A model ready for use (eval mode, on ``device``) with what came with it.

    ``recipe``: the parsed :class:`vlp.recipe.Recipe` (or None); ``task``: the ``task`` section of
    a fine-tuning run (e.g. ``answer_vocab``, ``prompt``), empty otherwise; ``source``: the weights file.
    """

    model: Any
    tokenizer: Any
    recipe: Any = None
    task: dict[str, Any] = field(default_factory=dict)
    source: str = ""


def load_model(
    path: str | Path, tokenizer: Any = None, device: Any = "cpu", require_tokenizer: bool = True
) -> LoadedModel:
    """Load a model, run or checkpoint folder (see the module docstring) for use.

    Weights must cover every parameter and buffer of the model; a missing one is an error that
    names it (evaluating a half-initialized model silently would be worse). ``tokenizer``: a
    Tokenizer, a tokenizer path, or None = found by :func:`tokenizer_for`; with
    ``require_tokenizer=False`` a model without one loads with ``tokenizer=None`` (image-only use).
    """
    path = Path(path)
    folder, weights_file = weights_of(path, "--model")
    if folder is None:
        raise ConfigError(f"--model: {path} has weights but no {RECIPE_NAME} to rebuild the model from")
    data = read_yaml(folder / RECIPE_NAME)  # read once: a fine-tuning run's own keys (RUN_ONLY_KEYS) come along
    model = build_saved_model(folder, data=data)
    task = data.get("task") or {}
    recipe = model.recipe
    load_state_strictly(model, model_weights(load_safetensors(weights_file), model.state_dict()), weights_file)
    model.to(device).eval()
    try:
        found = tokenizer_for(tokenizer, folder, recipe, data.get("init"))
    except ConfigError:
        if require_tokenizer or tokenizer is not None:
            raise
        found = None
    return LoadedModel(model, found, recipe, dict(task), str(weights_file))


def load_any(
    path: str | Path, tokenizer: Any = None, device: Any = "cpu", require_tokenizer: bool = True
) -> LoadedModel:
    """Any model a user holds, ready for use: a model, run or checkpoint folder (:func:`load_model`), or a
    transformers folder, OpenCLIP checkpoint or hub model id read as it is (:func:`from_pretrained`) with the
    tokenizer files that came with it (or ``tokenizer``). Image preprocessing is the model's own either way
    (the recipe's data section, which a converted or read checkpoint takes from its processor settings)."""
    local = Path(path)
    # vlp's own folders: a model or run folder holds recipe.yaml; a checkpoint folder sits in checkpoints/
    own = (local / RECIPE_NAME).is_file() or (local / CHECKPOINTS).is_dir() or local.parent.name == CHECKPOINTS
    if local.is_dir() and own:
        return load_model(local, tokenizer, device, require_tokenizer)
    try:
        folder = resolve(path)
        model = from_pretrained(folder)
    except FileNotFoundError as err:
        raise ConfigError(f"--model: {err}") from err
    model.to(device).eval()
    home = folder if folder.is_dir() else folder.parent
    found = None
    if tokenizer is not None or has_tokenizer(home) or require_tokenizer:
        found = tokenizer_for(tokenizer, home, getattr(model, "recipe", None))
    return LoadedModel(model, found, getattr(model, "recipe", None), {}, str(folder))


def from_pretrained(path: str | Path, name: str | None = None, **overrides: Any) -> Any:
    """A vlp model from a vlp folder, a transformers folder, an OpenCLIP state dict file or hub folder, or a
    hub model id (``org/name``, see :func:`vlp.interop.hub.resolve`) (``vlp.create_model(name, pretrained=path)``).

    ``name``, when given, is the recipe the caller expects (``"clip"``, ``"vilt-tiny"``, ...): a
    checkpoint of another model family is refused. ``overrides`` are dotted recipe keys; any that
    changes a weight's shape makes the strict load fail with the names.
    """
    folder = resolve(path)  # a local path, or a hub model id (org/name) from the Hugging Face cache
    openclip_folder = is_openclip_folder(folder) and not is_model_folder(folder) and not is_hf_folder(folder)
    if folder.is_file() or openclip_folder:  # an OpenCLIP / OpenAI CLIP state dict file or OpenCLIP hub folder
        model = load_openclip(folder, overrides=overrides)
        if name is not None:
            check_family(name, detect(model.cfg), folder)
        return model
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: pretrained folder or OpenCLIP file not found")
    if is_model_folder(folder):
        model = load(folder, overrides=overrides)
        conv = detect(model.cfg, folder)
    elif is_hf_folder(folder):
        model, conv, _, _ = load_hf(folder, overrides)
    else:
        raise FileNotFoundError(
            f"{folder}: neither a vlp model folder ({RECIPE_NAME} + {WEIGHTS_NAME}) nor a transformers folder "
            "(config.json + weights)"
        )
    if name is not None:
        check_family(name, conv, folder)
    return model


__all__ = [
    "RUN_ONLY_KEYS",
    "LoadedModel",
    "from_pretrained",
    "has_tokenizer",
    "is_model_folder",
    "load_any",
    "load_model",
    "load_tokenizer",
    "model_weights",
    "tokenizer_for",
    "weights_of",
]
