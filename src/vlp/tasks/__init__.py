"""Downstream tasks: a head or decode step, a fine-tuning module, ``evaluate`` and a predict API.

Each task is a package here (``head``, ``finetune``, ``evaluate``, ``predict``) and is listed once,
in :data:`TASKS`: the ``vlp eval`` command of a task lives in ``vlp.commands.eval_<name>``, its
fine-tuning step is ``build_finetuning(task, recipe, model, tokenizer, *, rank, world_size) ->
(module, loader)`` (``module.forward(batch) -> (loss, logs)``, trained by ``vlp finetune``), and
its ``kind`` names the data it reads (:data:`vlp.data.detect.DATA_KINDS`). ``task`` is a task
recipe's ``task:`` mapping; its ``type`` picks the entry.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from vlp.config import ConfigError


@dataclass(frozen=True)
class TaskSpec:
    """One downstream task: where it lives, the kind of data it reads, whether ``vlp finetune`` trains it."""

    module: str
    kind: str  # a key of vlp.data.detect.DATA_KINDS
    finetunes: bool = True


TASKS: dict[str, TaskSpec] = {
    "retrieval": TaskSpec("vlp.tasks.retrieval", "captions"),
    "vqa": TaskSpec("vlp.tasks.vqa", "vqa"),
    "refexp": TaskSpec("vlp.tasks.refexp", "refcoco"),
    "captioning": TaskSpec("vlp.tasks.captioning", "captions"),
    "zeroshot": TaskSpec("vlp.tasks.zeroshot", "instances"),
    "probe": TaskSpec("vlp.tasks.probe", "instances", finetunes=False),
    "tagging": TaskSpec("vlp.tasks.tagging", "instances"),
    "perception": TaskSpec("vlp.tasks.perception", "instances", finetunes=False),
    "seq2seq": TaskSpec("vlp.tasks.seq2seq", "captions"),  # OFA: captions + VQA + refexp as generation
    "fewshot": TaskSpec("vlp.tasks.fewshot", "instances", finetunes=False),
}


def task_spec(name: Any, key: str = "task.type") -> TaskSpec:
    """The :class:`TaskSpec` of ``name``; an unknown name is a ConfigError listing the tasks."""
    if name not in TASKS:
        raise ConfigError(f"{key}: unknown task {name!r}; allowed: {', '.join(TASKS)}")
    return TASKS[name]


def build_finetuning(
    task: dict[str, Any], recipe: Any, model: Any, tokenizer: Any, *, rank: int = 0, world_size: int = 1
) -> tuple[Any, Any]:
    """The fine-tuning module and train loader of the task named by ``task['type']``."""
    spec = task_spec(task.get("type"))
    if not spec.finetunes:
        raise ConfigError(f"task.type: {task['type']} has no fine-tuning step (it is evaluation-only)")
    module = importlib.import_module(spec.module)
    return module.build_finetuning(task, recipe, model, tokenizer, rank=rank, world_size=world_size)
