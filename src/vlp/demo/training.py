"""What the demo and the taxonomy benchmark share: a ShapesWorld tokenizer, quiet training runs
through the Python API (no subprocesses), and timing of wall and CPU seconds.

Training goes through the same code as ``vlp pretrain`` / ``vlp finetune``
(:func:`vlp.train.jobs.build_pretraining_job`, :func:`vlp.train.jobs.build_finetuning_job`,
:class:`vlp.train.engine.Trainer`); only the progress bar and TensorBoard are turned off.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlp.config import ConfigError, read_yaml, set_dotted
from vlp.io.folders import RUN_ONLY_KEYS


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its finished children (data workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass
class Timer:
    """Wall and CPU seconds of named steps, in the order they ran."""

    steps: list[dict[str, Any]] = field(default_factory=list)

    @contextlib.contextmanager
    def step(self, name: str, log: Any = print) -> Iterator[None]:
        """Time the ``with`` block as step ``name``; ``log`` gets a start and an end line."""
        log(f"[{len(self.steps) + 1}] {name} ...")
        wall, cpu = time.perf_counter(), cpu_seconds()
        yield
        record = {"step": name, "wall_s": time.perf_counter() - wall, "cpu_s": cpu_seconds() - cpu}
        self.steps.append(record)
        log(f"    done in {record['wall_s']:.1f} s wall, {record['cpu_s']:.1f} s CPU")

    def total(self) -> dict[str, float]:
        return {
            "wall_s": sum(s["wall_s"] for s in self.steps),
            "cpu_s": sum(s["cpu_s"] for s in self.steps),
        }


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads (restored afterwards).

    Tiny models on a shared CPU are fastest with one thread: the ops are too small to split, and
    a second thread spends its time spin-waiting for a core another process holds (measured:
    ~10x slower steps with 2 threads on a busy 2-core machine).
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(threads)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def shapes_texts(world: str | Path) -> list[str]:
    """Every training text of a ShapesWorld folder: captions, questions, answers, referring expressions.

    Only the files that exist are read (the generator may have written a subset of its formats).
    """
    ann = Path(world) / "annotations"
    texts: list[str] = []
    captions = ann / "captions_train.json"
    if captions.is_file():
        texts += [c["caption"] for c in json.loads(captions.read_text(encoding="utf-8"))]
    questions = ann / "v2_OpenEnded_shapes_train_questions.json"
    if questions.is_file():
        texts += [q["question"] for q in json.loads(questions.read_text(encoding="utf-8"))["questions"]]
    answers = ann / "v2_shapes_train_annotations.json"
    if answers.is_file():
        texts += [a["multiple_choice_answer"] for a in json.loads(answers.read_text(encoding="utf-8"))["annotations"]]
    if not texts:
        raise ConfigError(f"{ann}: no ShapesWorld training text (captions_train.json or VQA files) to train on")
    return texts


def train_shapes_tokenizer(world: str | Path, out: str | Path, vocab_size: int = 400) -> Any:
    """A WordPiece tokenizer trained on the world's texts, saved to ``out``."""
    from vlp.text import Tokenizer

    tokenizer = Tokenizer.train(shapes_texts(world), vocab_size=vocab_size)
    tokenizer.save(out)
    return tokenizer


def model_recipe(name_or_path: str | Path, world: str | Path, tokenizer: Any, overrides: dict[str, Any]) -> dict:
    """A model recipe mapping for ShapesWorld at ``world``: the tokenizer's vocabulary size,
    ``data.root`` set, quiet single-process training, then dotted ``overrides``."""
    from vlp.recipe import recipe_dict

    data = recipe_dict(name_or_path)
    model = data.setdefault("model", {})
    for part in ("text", "decoder"):
        if isinstance(model.get(part), dict):
            model[part]["vocab_size"] = tokenizer.vocab_size
    data.setdefault("data", {})["root"] = str(world)
    quiet = {"num_workers": 0, "progress": False, "tensorboard": False, "device": "cpu", "checkpoint_every": 0}
    data.setdefault("train", {}).update(quiet)
    for key, value in overrides.items():
        set_dotted(data, key, copy.deepcopy(value))
    return data


@contextlib.contextmanager
def captured(run_dir: str | Path) -> Iterator[None]:
    """Keep what the training code prints (the run summary, notes on fresh weights) out of the demo's
    own output: it goes to ``run_dir/output.txt`` instead, also when the block fails."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            yield
    finally:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        (Path(run_dir) / "output.txt").write_text(buffer.getvalue(), encoding="utf-8")


def progress_line(record: dict[str, Any], total: int) -> str:
    """One progress line of a quiet run from a ``metrics.jsonl`` record: step, losses, speed, time so far."""
    terms = ", ".join(
        f"{key[len('loss_') :]} {value:.3f}"
        for key, value in record.items()
        if key.startswith("loss_") and isinstance(value, (int, float))
    )
    loss = f"loss {record['loss']:.3f}" + (f" ({terms})" if terms else "") if record.get("loss") is not None else ""
    rate = f"{record['samples_per_s']:.0f} samples/s" if record.get("samples_per_s") else ""
    elapsed = f"{record['elapsed_s']:.0f} s" if record.get("elapsed_s") is not None else ""
    return "    " + "  ".join(part for part in (f"step {record['step']}/{total}", loss, rate, elapsed) if part)


class _ProgressReporter:
    """Reads a run's ``metrics.jsonl`` as it grows (a background thread) and hands ``progress`` a line each
    time the run passes another ``every`` steps. It relies only on the file's format, not on the engine."""

    def __init__(self, path: Path, total: int, progress: Any, lines: int = 10, poll_s: float = 1.0) -> None:
        import threading

        self.path, self.total, self.progress, self.poll_s = path, total, progress, poll_s
        self.every = max(1, total // lines)
        self.due, self.offset, self.partial = self.every, 0, ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-progress", daemon=True)

    def __enter__(self) -> _ProgressReporter:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()  # what was logged after the last poll

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.poll()

    def poll(self) -> None:
        if not self.path.is_file():
            return
        with open(self.path, encoding="utf-8") as handle:
            handle.seek(self.offset)
            text = self.partial + handle.read()
            self.offset = handle.tell()
        *complete, self.partial = text.split("\n")  # a line still being written waits for the next poll
        for line in complete:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            step = int(record.get("step", 0)) if isinstance(record, dict) else 0
            if step and (step >= self.due or step == self.total):  # records come every log_every steps
                self.progress(progress_line(record, self.total))
                self.due = (step // self.every + 1) * self.every


def _fit(job: Any, run_dir: str | Path, progress: Any = None, lines: int = 10) -> Any:
    """Train ``job``; ``progress`` (a callable taking a line) gets about ``lines`` progress lines, read from the
    records the run logs to ``metrics.jsonl`` (the run's own bar is off, and its output is captured)."""
    from vlp.train.engine import Trainer
    from vlp.train.logging import METRICS_FILE

    metrics = Path(run_dir) / METRICS_FILE
    metrics.unlink(missing_ok=True)  # an earlier run's records are not this run's progress
    trainer = Trainer(
        job.module, job.loader, train=job.train, optim=job.optim, schedule=job.schedule, run_dir=run_dir,
        recipe=job.recipe, overwrite=True,
    )  # fmt: skip
    if progress is None:
        return trainer.fit()
    with _ProgressReporter(metrics, job.train.steps, progress, lines):
        return trainer.fit()


def pretrain(recipe: dict[str, Any], tokenizer: Any, run_dir: str | Path, progress: Any = None) -> tuple[Any, Any]:
    """Pretrain ``recipe`` (a recipe mapping) into ``run_dir``; returns ``(model, TrainResult)``.

    The model comes back in eval mode with its recipe attached (``model.recipe``). ``progress``: a callable
    that gets a line every tenth of the run (step, losses, samples/s, seconds so far).
    """
    from vlp.recipe import parse_recipe
    from vlp.train.jobs import build_pretraining_job
    from vlp.train.rng import seed_everything

    parsed = parse_recipe(recipe, where=str(recipe.get("model", {}).get("name", "recipe")))
    seed_everything(parsed.train.seed)  # the initial weights, as `vlp pretrain` seeds them
    with captured(run_dir):
        job = build_pretraining_job(parsed, tokenizer=tokenizer)
        result = _fit(job, run_dir, progress)
    model = job.module.model
    model.eval()
    return model, result


def finetune(task_recipe: dict[str, Any], init: str | Path | None, tokenizer: Any, run_dir: str | Path) -> tuple:
    """Fine-tune a task recipe (a recipe mapping with ``task:``) from the weights in ``init``
    (None: from the recipe's fresh initial weights).

    Returns ``(model, task section as the run saved it (answer vocabulary, mode, ...), TrainResult)``.
    """
    from vlp.train.jobs import build_finetuning_job
    from vlp.train.rng import seed_everything

    data = {k: copy.deepcopy(v) for k, v in task_recipe.items() if k != "init"}
    seed_everything(int((data.get("train") or {}).get("seed", 0)))  # the new heads' initial weights
    with captured(run_dir):
        job = build_finetuning_job(data, init=str(init) if init else None, tokenizer=tokenizer,
                                   where=str(data["task"]["type"]))  # fmt: skip
        result = _fit(job, run_dir)
    model = job.module.model
    model.eval()
    return model, dict(job.recipe.get("task") or {}), result


def run_recipe(run_dir: str | Path) -> dict[str, Any]:
    """The model recipe a run saved (``RUN/recipe.yaml``) without the fine-tuning-only keys."""
    data = read_yaml(Path(run_dir) / "recipe.yaml")
    return {k: v for k, v in data.items() if k not in RUN_ONLY_KEYS}


def task_recipe(base: dict[str, Any], task: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A fine-tuning recipe: the pretrained run's model recipe + ``task`` + dotted ``overrides``."""
    data = copy.deepcopy(base)
    data["task"] = copy.deepcopy(task)
    data.pop("objectives", None)  # a task names its own losses
    for key, value in overrides.items():
        set_dotted(data, key, copy.deepcopy(value))
    return data


def shapes_data(model: Any, shapes_format: str, **options: Any) -> Any:
    """The model's own data section, reading ShapesWorld's ``shapes_format`` files (eval transform)."""
    import dataclasses

    from vlp.tasks.common import model_data_config

    base = model_data_config(model)
    merged = {**dict(base.options), "format": shapes_format, **options}
    return dataclasses.replace(base, options=merged)


def count_parameters(model: Any) -> int:
    """Distinct parameters of ``model`` (tied weights counted once)."""
    seen = {id(p): p.numel() for p in model.parameters()}
    return int(sum(seen.values()))


__all__ = [
    "Timer",
    "count_parameters",
    "cpu_seconds",
    "finetune",
    "model_recipe",
    "pretrain",
    "progress_line",
    "run_recipe",
    "shapes_data",
    "shapes_texts",
    "task_recipe",
    "torch_threads",
    "train_shapes_tokenizer",
]
