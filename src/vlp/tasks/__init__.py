"""Downstream tasks: a head or decode step, a fine-tuning module, ``evaluate`` and a predict API.

Each task lives in its own module and defines
``build_finetuning(task, recipe, model, tokenizer, *, rank, world_size) -> (module, loader)``
(``module.forward(batch) -> (loss, logs)``, trained by ``vlp finetune``) and
``register_eval(subparsers)`` for ``vlp eval``. ``task`` is the task recipe's
``task:`` mapping; its ``type`` picks the module here.
"""

from __future__ import annotations

import importlib
from typing import Any

from vlp.config import ConfigError

TASK_MODULES = {
    "retrieval": "vlp.tasks.retrieval",
    "vqa": "vlp.tasks.vqa",
    "captioning": "vlp.tasks.captioning",
    "refexp": "vlp.tasks.refexp",
    "zeroshot": "vlp.tasks.zeroshot",
    "tagging": "vlp.tasks.tagging",
}


def build_finetuning(
    task: dict[str, Any], recipe: Any, model: Any, tokenizer: Any, *, rank: int = 0, world_size: int = 1
) -> tuple[Any, Any]:
    """The fine-tuning module and train loader of the task named by ``task['type']``."""
    name = task.get("type")
    if name not in TASK_MODULES:
        raise ConfigError(f"task.type: unknown task {name!r}; allowed: {', '.join(TASK_MODULES)}")
    module = importlib.import_module(TASK_MODULES[name])
    builder = getattr(module, "build_finetuning", None)
    if builder is None:
        raise ConfigError(f"task.type: {name} has no fine-tuning step (it is evaluation-only)")
    return builder(task, recipe, model, tokenizer, rank=rank, world_size=world_size)
