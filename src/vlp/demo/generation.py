"""Text-to-image in the demo: train a small generator on the second core, or use one trained before.

The demo's own models are fastest on one thread, so the second core of a 2-core machine is idle;
:class:`BackgroundGenerator` trains the ``t2i-shapes`` recipe there, in its own process, for
``generation_steps`` optimizer steps (or ``generation_seconds`` of CPU time) while the rest of the demo runs
(its learning-rate schedule follows that budget, so the run ends annealed), and the report labels the samples
with how long the model trained. The full recipe (``vlp train-generation t2i-shapes``) trains for 15 minutes on 2 cores;
``vlp demo --generator RUN/model`` draws from such a model instead. Training renders its own one-object
ShapesWorld scenes (:class:`vlp.generation.data.ShapesStream`), so it needs nothing from the demo's data, and
runs on the training engine like every vlp run (its checkpoints are in ``runs/generation/checkpoints``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

RECIPE = "t2i-shapes"


def train_generator(run_dir: str | Path, steps: int = 0, seconds: float | None = None,
                    quick: bool = False) -> tuple[Path, dict[str, Any]]:  # fmt: skip
    """Train the ``t2i-shapes`` recipe into ``run_dir`` on one thread for ``steps`` optimizer steps, or, with
    ``seconds``, for that many seconds of this process's CPU time; returns ``(model folder, training summary)``.
    ``quick``: exactly two optimizer steps, whatever the budget (a smoke test whose outcome does not depend on
    the machine's speed)."""
    from vlp.demo.training import captured
    from vlp.generation.train import load_generation_recipe, train_generation

    overrides = ["train.threads=1", "train.sample_prompts=[]"]  # the demo draws its own samples
    if quick:
        # exactly two steps and no time budget: a smoke test must not depend on how busy the machine is
        overrides += ["train.steps=2", "train.time_budget_minutes=0"]
    elif seconds is not None:
        # CPU time: the same amount of training whether or not the machine is shared
        overrides += [f"train.time_budget_minutes={seconds / 60.0}", "train.budget_clock=cpu"]
    elif steps >= 1:
        overrides += [f"train.steps={steps}", "train.time_budget_minutes=0"]
    else:
        raise ValueError(f"train_generator: expected steps >= 1 or seconds, got steps={steps!r}, seconds=None")
    recipe = load_generation_recipe(RECIPE, overrides)
    with captured(run_dir):
        summary = train_generation(recipe, run_dir, overwrite=True, progress=False)
    return Path(summary["model"]), summary


def _train_and_sample(run_dir: str, budget: dict[str, float], quick: bool,
                      sample: tuple[list[str], str, int] | None) -> None:  # fmt: skip
    """:func:`train_generator`, then, with ``sample`` ``(prompts, PNG path, DDIM steps)``, the report's samples
    (:func:`generated_images`), here, off the demo's own process. It runs at the demo's priority: at a lower one
    a busy machine's other jobs starved it (48 CPU s in 35 minutes), and the demo waits for it at the end."""
    model, _ = train_generator(run_dir, int(budget.get("steps", 0)), budget.get("seconds"), quick)
    if sample is not None:
        prompts, png, steps = sample
        generated_images(model, prompts, Path(png), steps=steps)


class BackgroundGenerator:
    """``train_generator`` in a child process (spawned: no forked torch state), started at once.

    ``budget``: ``{"steps": N}`` or ``{"seconds": S}`` (:meth:`vlp.demo.config.DemoConfig.generation_budget`).
    :meth:`result` waits for it and returns ``(model folder, summary)``, or ``(None, reason)`` when the
    child failed (its output is in ``run_dir/log.txt``): a demo goes on without generated images rather
    than losing the other results. ``sample`` ``(prompts, PNG path, DDIM steps)``: the child also draws the
    samples of :func:`generated_images` into that PNG, whose path the summary then holds under ``figure``.
    """

    def __init__(self, run_dir: str | Path, budget: dict[str, float], quick: bool = False,
                 sample: tuple[list[str], str | Path, int] | None = None) -> None:  # fmt: skip
        import multiprocessing

        self.run_dir = Path(run_dir)
        self.sample = None if sample is None else (list(sample[0]), str(sample[1]), int(sample[2]))
        self.process = multiprocessing.get_context("spawn").Process(
            target=_train_and_sample, args=(str(self.run_dir), dict(budget), quick, self.sample), daemon=True
        )
        self.process.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds (None: until it ends) for the child; True once it has ended."""
        self.process.join(timeout)
        return not self.process.is_alive()

    def result(self) -> tuple[Path | None, dict[str, Any] | str]:
        import json

        self.process.join()
        summary = self.run_dir / "summary.json"
        if self.process.exitcode != 0 or not summary.is_file():
            return None, f"text-to-image training exited with code {self.process.exitcode}; see {self.run_dir}"
        data = json.loads(summary.read_text(encoding="utf-8"))
        if self.sample is not None and Path(self.sample[1]).is_file():
            data["figure"] = self.sample[1]
        return Path(data["model"]), data


def sample_prompts(objects: list[dict[str, Any]], count: int = 5) -> list[str]:
    """Single-object prompts in the words of ShapesWorld's captions ("a red circle"), distinct, in order."""
    return list(dict.fromkeys(f"a {o['color']} {o['shape']}" for o in objects))[:count]


def generated_images(generator: str | Path, prompts: list[str], out: Path, steps: int = 50,
                     samples: int = 2) -> Path:  # fmt: skip
    """Sample ``samples`` images per prompt (DDIM, ``steps`` steps, seed 0) from a trained text-to-image
    folder and draw them in a grid, each under its prompt."""
    import numpy as np

    from vlp.demo.figures import image_grid
    from vlp.generation import load_generator

    model = load_generator(generator)
    images = model.generate(prompts, samples=samples, seed=0, steps=steps)
    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    labels = [p for p in prompts for _ in range(samples)]
    return image_grid([np.ascontiguousarray(p) for p in pixels], labels, out)


__all__ = ["RECIPE", "BackgroundGenerator", "generated_images", "sample_prompts", "train_generator"]
