"""Overhead of the training engine: ``vlp pretrain``'s loop against a bare loop.

Both train the same tiny recipe (default clip-tiny) on the same ShapesWorld
data through the same loader, from the same initial weights:

- engine: :class:`vlp.train.engine.Trainer` exactly as ``vlp pretrain`` runs it
  (schedule, clipping, the per-step agreement all-reduce and host sync, the
  non-finite guard, metrics.jsonl, progress, EMA hooks);
- bare:   ``loss, _ = module(batch); loss.backward(); clip; opt.step(); opt.zero_grad()``.

Both are timed by the same wrapper around the loader, from the batch of step
``warmup`` to the batch of the last step, so set-up and the engine's final
checkpoint are left out alike. Two clocks: wall time (what a user waits), and
this process's CPU time (all its threads), which other processes on a shared
machine cannot inflate. Rounds alternate between the two loops. The engine must
reach at least 90% of the bare loop's samples per CPU-second (median over
rounds); wall-clock ratios (best round, median) are printed beside it. The
defaults use no loader workers and one intra-op thread, so that all the work is
in this process and idle threads spinning on a busy machine do not count as work.

    python benchmarks/bench_engine.py [--recipe clip-tiny] [--steps 30] [--rounds 5] [--workers 0]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from vlp.recipe import load_recipe
from vlp.train.engine import Trainer
from vlp.train.jobs import build_pretraining_job
from vlp.train.rng import seed_everything


class TimedLoader:
    """Passes batches (and every loader method) through; clocks batches ``start``..``stop``."""

    def __init__(self, loader: Any, start: int, stop: int) -> None:
        self.loader, self.start, self.stop = loader, start, stop
        self.count = 0
        self.wall = self.cpu = 0.0

    def __getattr__(self, name: str) -> Any:  # state_dict, set_epoch, ... of the real loader
        return getattr(self.loader, name)

    def __iter__(self):
        for batch in self.loader:
            if self.count == self.start:
                self.wall, self.cpu = -time.perf_counter(), -time.process_time()
            elif self.count == self.stop:
                self.wall += time.perf_counter()
                self.cpu += time.process_time()
            self.count += 1
            yield batch


def prepare(root: Path, images: int) -> tuple[Path, Any]:
    from vlp.data.shapesworld.generate import generate
    from vlp.text import Tokenizer

    generate(root / "data", images=images, size=32, seed=0, workers=1, formats=["albef"])
    captions = json.loads((root / "data" / "annotations" / "captions_train.json").read_text())
    return root / "data", Tokenizer.train([c["caption"] for c in captions], vocab_size=200)


def run_engine(recipe, tokenizer, run_dir: Path, warmup: int) -> TimedLoader:
    seed_everything(recipe.train.seed)
    job = build_pretraining_job(recipe, tokenizer=tokenizer)
    timed = TimedLoader(job.loader, warmup, recipe.train.steps - 1)
    Trainer(
        job.module, timed, train=job.train, optim=job.optim, schedule=job.schedule, run_dir=run_dir,
        recipe=job.recipe, overwrite=True,
    ).fit()  # fmt: skip
    return timed


def run_bare(recipe, tokenizer, warmup: int) -> TimedLoader:
    seed_everything(recipe.train.seed)
    job = build_pretraining_job(recipe, tokenizer=tokenizer)
    timed = TimedLoader(job.loader, warmup, recipe.train.steps - 1)
    module = job.module.train()
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=recipe.optim.lr, weight_decay=recipe.optim.weight_decay)
    after_step = getattr(module, "after_step", None)
    batches = iter(timed)
    for _ in range(recipe.train.steps):
        batch = next(batches, None)
        if batch is None:  # next epoch, as the engine does
            batches = iter(timed)
            batch = next(batches)
        loss, _ = module(batch)
        loss.backward()
        if recipe.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, recipe.optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if after_step is not None:
            after_step()
    return timed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="clip-tiny")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (1: no spin-waiting in CPU time)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    samples = (args.steps - 1 - args.warmup) * args.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data_root, tokenizer = prepare(root, args.images)
        overrides = [
            f"data.root={data_root}", f"model.text.vocab_size={tokenizer.vocab_size}",
            f"train.steps={args.steps}", f"train.batch_size={args.batch_size}", f"train.num_workers={args.workers}",
            "train.log_every=5", "train.checkpoint_every=0", "train.progress=false", "train.device=cpu",
        ]  # fmt: skip
        recipe = load_recipe(args.recipe, overrides)
        wall: dict[str, list[float]] = {"engine": [], "bare": []}
        cpu: dict[str, list[float]] = {"engine": [], "bare": []}
        for i in range(args.rounds):
            order = ("engine", "bare") if i % 2 == 0 else ("bare", "engine")
            for name in order:
                timed = (
                    run_engine(recipe, tokenizer, root / f"run{i}", args.warmup)
                    if name == "engine"
                    else run_bare(recipe, tokenizer, args.warmup)
                )
                wall[name].append(samples / timed.wall)
                cpu[name].append(samples / timed.cpu)
            print(
                f"round {i + 1}: samples/s engine {wall['engine'][-1]:7.1f} bare {wall['bare'][-1]:7.1f}   "
                f"samples/CPU-s engine {cpu['engine'][-1]:7.1f} bare {cpu['bare'][-1]:7.1f}",
                flush=True,
            )
    cpu_ratio = statistics.median(cpu["engine"]) / statistics.median(cpu["bare"])
    best = max(wall["engine"]) / max(wall["bare"])
    median = statistics.median(wall["engine"]) / statistics.median(wall["bare"])
    setup = f"{args.steps} steps of batch {args.batch_size}, {args.workers} loader workers"
    print(f"recipe {args.recipe}: {setup}, {torch.get_num_threads()} threads")
    print(f"engine / bare, wall samples/s: best {best:.3f}, median {median:.3f}")
    verdict = "PASS" if cpu_ratio >= 0.9 else "FAIL"
    print(f"engine / bare, samples per CPU-second (median): {cpu_ratio:.3f}  (target >= 0.90 -> {verdict})")
    return 0 if cpu_ratio >= 0.9 else 1


if __name__ == "__main__":
    raise SystemExit(main())
