"""The demo's fine-tunes side by side: after pretraining, VQA, referring expressions and captioning each start
from the same saved weights and depend on nothing of one another, so on 2 cores they are shared out between
this process and a second one: each takes the next job (longest first) when it is free.

The second process starts only once the core it needs is free (``wait_for_core``: the demo's text-to-image
process may still be training on it). A third busy process on 2 cores costs more than it brings: measured on
an idle 2-core machine, the three fine-tunes took 134 s wall beside the text-to-image process and 69 s
after it (each fine-tune's CPU time grew by a third from the sharing).

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
    wait_for_core: Callable[[float | None], bool] | None = None,
) -> list[Any]:
    """Run the fine-tune steps ``jobs`` (``(label, function name in vlp.demo.steps)``, longest first) and return
    their StepOutputs in the order given. ``processes`` 2 or more: a spawned child process takes jobs too, once
    the second core is free: ``wait_for_core(timeout)`` waits up to ``timeout`` seconds (None: for good) and
    says whether it is (None: free at once). The first job goes to the child when the core is free at the
    start, else to this process. 1: all here, in order. More processes than 2 would only queue on 2 cores."""
    from vlp.demo import steps

    def here(label: str, name: str) -> Any:
        wall, cpu = time.perf_counter(), time.process_time()  # this process only: children finish meanwhile
        output = getattr(steps, name)(pretrained, tokenizer, world, cfg, runs)
        log(f"    {label}: {time.perf_counter() - wall:.1f} s wall, {time.process_time() - cpu:.1f} s CPU")
        return output

    if processes < 2 or len(jobs) < 2:
        return [here(label, name) for label, name in jobs]
    import multiprocessing
    import threading
    from concurrent.futures import ProcessPoolExecutor

    pending = list(enumerate(jobs))  # the next job goes to whichever process is free first
    lock = threading.Lock()
    outputs: list[Any] = [None] * len(jobs)
    failure: list[BaseException] = []

    def take() -> tuple[int, tuple[str, str]] | None:
        with lock:
            return pending.pop(0) if pending and not failure else None

    # the first job is handed out before the second process's thread starts: to it when its core is free now
    child_first = wait_for_core is None or wait_for_core(0)
    first = take()

    def second_process() -> None:
        try:
            if child_first:
                job = first
            else:
                wait_for_core(None)  # not child_first: there is a wait_for_core
                job = take()
            if job is None:  # this process took the rest meanwhile
                return
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
                while job is not None:
                    index, (label, name) = job
                    future = pool.submit(_step_in_child, name, str(pretrained), str(tokenizer_dir), str(world),
                                         cfg, str(runs))  # fmt: skip
                    outputs[index], wall, cpu = future.result()
                    log(f"    {label} (second process): {wall:.1f} s wall, {cpu:.1f} s CPU")
                    job = take()
        except BaseException as error:  # re-raised in this thread below
            failure.append(error)

    helper = threading.Thread(target=second_process, name="demo-second-process", daemon=True)
    helper.start()
    try:
        mine = take() if child_first else first
        while mine is not None:
            index, (label, name) = mine
            outputs[index] = here(label, name)
            mine = take()
    finally:
        with lock:  # done, or failed here: the second process finishes its job and takes no other
            pending.clear()
        helper.join()
    if failure:
        raise failure[0]
    return outputs


__all__ = ["run_finetunes"]
