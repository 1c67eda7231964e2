"""``vlp eval TASK``: each downstream task adds its own evaluation subcommand.

Each task's command module (``vlp.commands.eval_<task>``, one per entry of :data:`vlp.tasks.TASKS`)
exposes ``register(subparsers)``; this group only collects them, so adding a task never touches
the others.
"""

from __future__ import annotations

import argparse
import importlib

from vlp.tasks import TASKS

# one command module per task (vlp.commands.eval_<task>), and text-to-image's evaluation
EVAL_MODULES = (*(f"vlp.commands.eval_{name}" for name in TASKS), "vlp.commands.eval_generation")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval", help="evaluate a model on a downstream task")
    tasks = parser.add_subparsers(dest="task", metavar="TASK")
    parser.set_defaults(run=lambda args: parser.print_help() or 2)
    for name in EVAL_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:  # a real missing dependency inside the task, not an absent task
                raise
            continue
        module.register(tasks)
