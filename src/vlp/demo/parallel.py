"""The demo's fine-tunes side by side: after pretraining, VQA, referring expressions and captioning each start
from the same saved weights and depend on nothing of one another, so on 2 cores the longest (VQA) runs in a
second process while the others run here, one after the other.

Each fine-tune seeds itself (:func:`vlp.demo.training.finetune`) and runs on ``cfg.threads`` threads wherever
it runs, so its scores are the same in either process (``tests/demo`` checks this). The child process is
spawned (no forked torch state) and reads the tokenizer from its folder.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vlp.demo.config import DemoConfig
from vlp.demo.training import torch_threads

Log = Callable[[str], None]


def _step_in_child(name: str, pretrained: str, tokenizer_dir: str, world: str, cfg: DemoConfig,
                   runs: str) -> tuple[Any, float, float]:  # fmt: skip
    """Run ``vlp.demo.steps.<name>`` in this (child) process; returns ``(StepOutput without the model, wall s,
    CPU s)``. The model stays here: the pipeline only needs the rows, metrics, examples and run folder."""
    from vlp.demo import steps
    from vlp.text import Tokenizer

    with torch_threads(cfg.threads):
        wall, cpu = time.perf_counter(), time.process_time()
        output = getattr(steps, name)(Path(pretrained), Tokenizer.load(tokenizer_dir), Path(world), cfg, Path(runs))
        output.model = None
        return output, time.perf_counter() - wall, time.process_time() - cpu


def run_finetunes(
    jobs: Sequence[tuple[str, str]],
    pretrained: Path,
    tokenizer: Any,
    tokenizer_dir: Path,
    world: Path,
    cfg: DemoConfig,
    runs: Path,
    processes: int,
    log: Log,
) -> list[Any]:
    """Run the fine-tune steps ``jobs`` (``(label, function name in vlp.demo.steps)``, longest first) and return
    their StepOutputs in the order given. ``processes`` 2 or more: the first job runs in a spawned child process
    meanwhile (more processes than 2 would only queue on a 2-core machine); 1: all here, in order."""
    from vlp.demo import steps

    def here(label: str, name: str) -> Any:
        wall, cpu = time.perf_counter(), time.process_time()  # this process only: children finish meanwhile
        output = getattr(steps, name)(pretrained, tokenizer, world, cfg, runs)
        log(f"    {label}: {time.perf_counter() - wall:.1f} s wall, {time.process_time() - cpu:.1f} s CPU")
        return output

    if processes < 2 or len(jobs) < 2:
        return [here(label, name) for label, name in jobs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    (first_label, first), rest = jobs[0], jobs[1:]
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        future = pool.submit(_step_in_child, first, str(pretrained), str(tokenizer_dir), str(world), cfg, str(runs))
        outputs = [here(label, name) for label, name in rest]
        output, wall, cpu = future.result()
    log(f"    {first_label} (second process): {wall:.1f} s wall, {cpu:.1f} s CPU")
    return [output, *outputs]


__all__ = ["run_finetunes"]
