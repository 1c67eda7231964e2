"""What ``vlp pretrain`` and ``vlp finetune`` train: recipe -> (module, loader).

A :class:`Job` is everything the :class:`~vlp.train.engine.Trainer` needs. The
builders import the model, objectives, data and task packages lazily, so the
engine itself depends on none of them.
"""

from __future__ import annotations

import copy
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlp.config import ConfigError, to_dict
from vlp.data import build_loader
from vlp.io.checkpoints import load_safetensors
from vlp.io.factory import create_model
from vlp.io.folders import load_tokenizer, model_weights, weights_of
from vlp.objectives import Pretraining
from vlp.recipe import parse_recipe
from vlp.recipe.run import OptimConfig, ScheduleConfig, TrainConfig


@dataclass
class Job:
    name: str  # default run folder: runs/<name>
    module: nn.Module  # forward(batch) -> (loss, logs)
    loader: Any  # iterable of batches with .to(device); ideally with state_dict()
    train: TrainConfig
    optim: OptimConfig
    schedule: ScheduleConfig
    recipe: dict[str, Any]  # plain data, saved as recipe.yaml and inside every checkpoint


def load_tokenizer_for(recipe: Any, path: str | None = None) -> Any:
    """The tokenizer named by ``path`` or the recipe's ``model.tokenizer``."""
    path = path or getattr(recipe.model, "tokenizer", "")
    if not path:
        raise ConfigError(
            "model.tokenizer: empty; set it to a tokenizer folder, tokenizer.json or vocab.txt "
            "(train one with `vlp tokenizer train --input CAPTIONS --out DIR`) or pass --tokenizer"
        )
    return load_tokenizer(path, "model.tokenizer")


def build_pretraining_job(
    recipe: Any, *, rank: int = 0, world_size: int = 1, tokenizer: Any = None, name: str | None = None
) -> Job:
    """Model from ``recipe.model``, its weighted ``objectives`` as one module, the ``data`` train split."""
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer_for(recipe)
    model = create_model(recipe)
    if recipe.train.init:
        missing, unexpected = load_init_weights(model, recipe.train.init, recipe.train.init_parts)
        print(init_report(model, recipe.train.init, missing, unexpected))
    module = Pretraining(model, recipe.objectives, tokenizer=tokenizer)
    loader = build_loader(
        recipe.data,
        "train",
        tokenizer,
        recipe.train.batch_size,
        num_workers=recipe.train.num_workers,
        rank=rank,
        world_size=world_size,
        pin_memory=torch.cuda.is_available(),
    )
    return Job(
        name=name or recipe.model.name,
        module=module,
        loader=loader,
        train=recipe.train,
        optim=recipe.optim,
        schedule=recipe.schedule,
        recipe=to_dict(recipe),
    )


def load_init_weights(
    model: nn.Module, path: str | Path, parts: list[str] | tuple[str, ...] = ()
) -> tuple[list[str], list[str]]:
    """Load pretrained weights into ``model`` non-strictly; returns (missing, unexpected) keys.

    ``path`` may be a ``.safetensors`` file, a folder written by ``save_pretrained``,
    a checkpoint folder or a run folder. Weights of a pretraining run are stored
    under ``model.`` (the :class:`~vlp.objectives.Pretraining` wrapper); that prefix
    is stripped and the wrapper's other parts (objective heads, momentum copy) are
    left out. ``parts``: only weights named ``PART.*`` for one of them (e.g. ``["vision"]``).
    Missing keys are expected for new task heads; a shape mismatch is an error.
    """
    _, file = weights_of(Path(path), "init")
    own = model.state_dict()
    weights = model_weights(load_safetensors(file), own)
    if parts:
        prefixes = tuple(f"{p.rstrip('.')}." for p in parts)
        weights = {k: v for k, v in weights.items() if k.startswith(prefixes)}
        if not weights:
            raise ConfigError(f"init: {file} holds no weight under {', '.join(parts)} (init_parts)")
    bad = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in weights.items()
        if k in own and v.shape != own[k].shape
    ]
    if bad:
        raise ConfigError(f"init: {file}: shapes do not fit the model: {', '.join(bad[:5])}")
    result = model.load_state_dict(weights, strict=False)
    if not set(weights) & set(own):
        raise ConfigError(f"init: {file}: no weight name matches the model (is it a checkpoint of another model?)")
    return sorted(result.missing_keys), sorted(result.unexpected_keys)


def _part(key: str) -> str:
    """The top-level part a weight belongs to: ``text``, ``vision``, ``fusion``, ... and ``heads.NAME`` per head."""
    parts = key.split(".")
    return ".".join(parts[:2]) if parts[0] == "heads" and len(parts) > 2 else parts[0]


def init_report(model: nn.Module, path: str | Path, missing: list[str], unexpected: list[str]) -> str:
    """What ``--init`` transferred: per top-level part, how many tensors came from ``path`` and how many start
    fresh, and how many of the file's tensors the model has no place for."""
    counts: dict[str, list[int]] = {}
    fresh = set(missing)
    for key in model.state_dict():
        counts.setdefault(_part(key), [0, 0])[key in fresh] += 1
    width = max(len("part"), *(len(p) for p in counts))
    lines = [f"init: weights from {path}", f"  {'part':<{width}}  loaded  fresh"]
    lines += [f"  {part:<{width}}  {n_loaded:>6}  {n_fresh:>5}" for part, (n_loaded, n_fresh) in counts.items()]
    loaded, total = sum(c[0] for c in counts.values()), sum(sum(c) for c in counts.values())
    lines.append(f"  {'total':<{width}}  {loaded:>6}  {total - loaded:>5}")
    whole = [part for part, (n_loaded, _) in counts.items() if n_loaded == 0]
    if whole:
        lines.append(f"  starting wholly fresh: {', '.join(whole)} (new task heads, or parts the weights lack)")
    if unexpected:
        unused = sorted({_part(k) for k in unexpected})
        lines.append(f"  not used: {len(unexpected)} tensor(s) of the weights under {', '.join(unused)}")
    return "\n".join(lines)


def build_finetuning_job(
    data: dict[str, Any],
    *,
    rank: int = 0,
    world_size: int = 1,
    init: str | None = None,
    tokenizer: Any = None,
    where: str = "task recipe",
) -> Job:
    """A task recipe: a recipe plus ``task: {type: ..., ...}`` and ``init: PRETRAINED``.

    The task side comes from ``vlp.tasks.build_finetuning(task, recipe, model,
    tokenizer, rank=, world_size=) -> (module, loader)``; the model is built from
    the recipe and initialised from ``init`` (or ``--init``).
    """
    data = copy.deepcopy(data)
    task = data.pop("task", None)
    init = init or data.pop("init", None)
    data.pop("init", None)
    if not isinstance(task, dict) or "type" not in task:
        raise ConfigError(f"{where}.task: a task recipe needs a mapping with a 'type' (e.g. vqa, retrieval)")
    builder = getattr(importlib.import_module("vlp.tasks"), "build_finetuning", None)
    if builder is None:
        raise ConfigError(f"{where}.task: this vlp has no task fine-tuning builder (vlp.tasks.build_finetuning)")
    recipe = parse_recipe(data, where=where)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer_for(recipe)
    model = create_model(recipe)
    if init:
        missing, unexpected = load_init_weights(model, init)
        print(init_report(model, init, missing, unexpected))
    module, loader = builder(task, recipe, model, tokenizer, rank=rank, world_size=world_size)
    plain = to_dict(recipe)
    plain.update(task=task, init=str(init) if init else None)
    return Job(
        name=f"{recipe.model.name}-{task['type']}",
        module=module,
        loader=loader,
        train=recipe.train,
        optim=recipe.optim,
        schedule=recipe.schedule,
        recipe=plain,
    )


__all__ = ["Job", "build_finetuning_job", "build_pretraining_job", "init_report", "load_init_weights"]
