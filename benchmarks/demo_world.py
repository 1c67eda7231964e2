"""What the ShapesWorld measurement scripts share: the demo's world, tokenizer and tagger, made once.

The demo (src/vlp/demo) learns object shape only when the image tower starts from a tagger trained on
the images' object categories; the scripts that compare pretraining variants (bench_itc_queue.py,
bench_fewshot.py, bench_capfilt.py) start from the same tagger, made here the way the demo makes it.
Every command runs as a child process with one torch thread (a shared 2-core machine).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from vlp.text import Tokenizer

DEMO_RECIPE = Path(__file__).resolve().parents[1] / "src" / "vlp" / "demo" / "recipes" / "albef-demo.yaml"
VLP = str(Path(sys.executable).with_name("vlp"))
# the demo's tagging step (src/vlp/demo/steps.py): its model, lr 2e-3 cosine, warm-up steps // 20, batch 32
TAGGER = """base: {base}
task: {{type: tagging, pool: auto, min_area: 0}}
init: null
data: {{options: {{format: instances}}}}
optim: {{lr: 2.0e-3}}
schedule: {{name: cosine, warmup_steps: {warmup}}}
train: {{steps: {steps}, batch_size: 32, log_every: 25, checkpoint_every: 0, find_unused_parameters: true}}
"""


def run(cmd: list[str], log: Path) -> dict[str, float]:
    """Run ``cmd`` with one thread, its output to ``log``; wall and CPU seconds (the child's user + system)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    wall, before = time.perf_counter(), os.times()
    with log.open("w", encoding="utf-8") as out:
        done = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    after = os.times()
    if done.returncode:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}; see {log}")
    cpu = after.children_user - before.children_user + after.children_system - before.children_system
    return {"wall_s": time.perf_counter() - wall, "cpu_s": cpu}


def render(folder: Path, images: int, seed: int, log: Path, *extra: str) -> dict[str, float] | None:
    """``vlp data synth`` of ``images`` 32x32 scenes into ``folder`` unless it is there; its cost, or None."""
    if (folder / "meta.json").exists():
        return None
    synth = [VLP, "data", "synth", "--out", str(folder), "--images", str(images), "--size", "32",
             "--seed", str(seed), "--quiet", "--overwrite", "--workers", "1", *extra]  # fmt: skip
    return run(synth, log)


def world_arguments(parser: argparse.ArgumentParser, out: str) -> None:
    """``--out`` (default ``out``) and the sizes :func:`demo_world` takes: ``--images``, ``--tag-steps``."""
    parser.add_argument("--out", default=out)
    parser.add_argument("--images", type=int, default=3000, help="ShapesWorld images per world (the demo's 3,000)")
    parser.add_argument("--tag-steps", type=int, default=800, help="tagger steps of 32 (the demo's 800)")


@dataclass
class DemoWorld:
    """The rendered world, its tokenizer, the tagger, and the flags every later ``vlp pretrain`` or
    ``vlp finetune`` shares (``common``: vocabulary, one thread, seed, ``--overwrite``; not the data)."""

    data: Path
    tokenizer: Path
    tagger: Path
    common: list[str]

    def pretrain(self, recipe: Path | str, out: Path, steps: int, *sets: str) -> list[str]:
        """``vlp pretrain`` of ``recipe`` from the tagger's image tower for ``steps`` steps, with more ``--set``s."""
        flags = [f for s in sets for f in ("--set", s)]
        return [VLP, "pretrain", str(recipe), "--set", f"data.root={self.data}", *self.common,
                "--set", f"model.tokenizer={self.tokenizer}", "--set", f"train.steps={steps}",
                "--set", f"train.init={self.tagger}", "--set", "train.init_parts=[vision]", *flags,
                "--out", str(out)]  # fmt: skip


def demo_world(out: Path, images: int, tag_steps: int, seed: int, costs: dict[str, dict[str, float]]) -> DemoWorld:
    """Render the demo's world into ``out/data``, train its tokenizer and the tagger (each skipped when done);
    the costs of what ran go into ``costs``."""
    data, tok, tagger = out / "data", out / "data" / "tokenizer", out / "tagger"
    if cost := render(data, images, seed, out / "synth.log"):
        costs["render"] = cost
    if not (tok / "vocab.txt").exists():
        captions = str(data / "annotations" / "dataset_shapes.json")
        train_tok = [VLP, "tokenizer", "train", "--input", captions, "--out", str(tok), "--vocab-size", "400"]
        costs["tokenizer"] = run(train_tok, out / "tokenizer.log")
    vocab = Tokenizer.load(tok).vocab_size  # the model's vocabulary is the tokenizer's (as the demo sets it)
    common = ["--set", f"model.text.vocab_size={vocab}", "--set", "train.threads=1", "--set", f"train.seed={seed}",
              "--overwrite"]  # fmt: skip
    if not (tagger / "summary.json").exists():
        recipe = out / "tagger.yaml"
        recipe.write_text(TAGGER.format(base=DEMO_RECIPE, warmup=max(1, tag_steps // 20), steps=tag_steps))
        costs["tagger"] = run([VLP, "finetune", str(recipe), "--out", str(tagger), "--set", f"data.root={data}",
                               "--tokenizer", str(tok), *common], out / "tagger.log")  # fmt: skip
    return DemoWorld(data, tok, tagger, common)
