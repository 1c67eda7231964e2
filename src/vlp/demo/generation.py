"""Text-to-image in the demo: train a small generator for a fixed time, or use one trained before.

The full recipe (``vlp train-generation t2i-shapes``) needs about 15 minutes of one core, more than
the demo's whole budget; with ``generation_seconds > 0`` the same recipe trains for that much CPU time
(its learning-rate schedule follows the time budget, so the run ends annealed), and the report labels
the samples with how long the model trained. Measured: after 60 s (172 steps) the samples are
still noise; colours appear after about 6-8 CPU minutes. So the demo's default is 0 and
``vlp demo --generator RUN/model`` draws from a model trained beforehand. Training renders its own
one-object ShapesWorld scenes (:class:`vlp.generation.data.ShapesStream`), so it needs nothing from
the demo's data folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

RECIPE = "t2i-shapes"


def train_generator(run_dir: str | Path, seconds: float, quick: bool = False) -> tuple[Path, dict[str, Any]]:
    """Train the ``t2i-shapes`` recipe into ``run_dir`` for ``seconds`` of this process's CPU time (one
    thread); returns ``(model folder, training summary)``. ``quick`` stops after two optimizer steps."""
    from vlp.demo.training import captured
    from vlp.generation.train import load_generation_recipe, train_generation

    overrides = [
        f"train.time_budget_minutes={seconds / 60.0}",
        "train.budget_clock=cpu",  # the same amount of training whether or not the machine is shared
        "train.threads=1",
        "train.sample_prompts=[]",  # the demo draws its own samples
    ]
    if quick:
        overrides.append("train.steps=2")
    recipe = load_generation_recipe(RECIPE, overrides)
    with captured(run_dir):
        summary = train_generation(recipe, run_dir, overwrite=True, progress=False)
    return Path(summary["model"]), summary


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


__all__ = ["RECIPE", "generated_images", "sample_prompts", "train_generator"]
