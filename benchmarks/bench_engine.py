"""Overhead of the training engine: ``vlp pretrain``'s loop against a bare loop.

Both train the same tiny recipe (default clip-tiny) on the same ShapesWorld
data through the same loader, from the same initial weights:

- engine: :class:`vlp.train.engine.Trainer` exactly as ``vlp pretrain`` runs it
  (schedule, clipping, the per-step agreement all-reduce and host sync, the
  non-finite guard, metrics.jsonl, EMA hooks);
- bare:   ``loss, _ = module(batch); loss.backward(); clip; opt.step(); opt.zero_grad()``.

Throughput is measured after a warm-up interval and the engine's final
checkpoint is left out (the bare loop writes none). Rounds alternate between the
two; on a shared machine other processes make single rounds noisy, so the best
round of each (the least disturbed, as ``timeit`` takes the minimum) is compared,
and the medians are printed too. The engine must reach at least 90% of the bare
loop's samples/s.

    python benchmarks/bench_engine.py [--recipe clip-tiny] [--steps 30] [--rounds 5] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from vlp.recipe import load_recipe
from vlp.train.engine import Trainer
from vlp.train.jobs import build_pretraining_job
from vlp.train.logging import read_metrics
from vlp.train.rng import seed_everything


def prepare(root: Path, images: int) -> tuple[Path, object]:
    from vlp.data.shapesworld.generate import generate
    from vlp.text import Tokenizer

    generate(root / "data", images=images, size=32, seed=0, workers=1, formats=["albef"])
    captions = json.loads((root / "data" / "annotations" / "captions_train.json").read_text())
    return root / "data", Tokenizer.train([c["caption"] for c in captions], vocab_size=200)


def engine_rate(recipe, tokenizer, run_dir: Path, warmup: int) -> float:
    seed_everything(recipe.train.seed)
    job = build_pretraining_job(recipe, tokenizer=tokenizer)
    Trainer(
        job.module, job.loader, train=job.train, optim=job.optim, schedule=job.schedule, run_dir=run_dir,
        recipe=job.recipe, overwrite=True,
    ).fit()  # fmt: skip
    records = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["step"] > warmup]
    samples = recipe.train.log_every * recipe.train.batch_size
    # each record's rate covers log_every steps: overall = samples / summed interval times
    return samples * len(records) / sum(samples / r["samples_per_s"] for r in records)


def bare_rate(recipe, tokenizer, warmup: int) -> float:
    seed_everything(recipe.train.seed)
    job = build_pretraining_job(recipe, tokenizer=tokenizer)
    module = job.module.train()
    optimizer = torch.optim.AdamW(
        [p for p in module.parameters() if p.requires_grad], lr=recipe.optim.lr, weight_decay=recipe.optim.weight_decay
    )
    after_step = getattr(module, "after_step", None)
    batches = iter(job.loader)
    start, counted = None, 0
    for step in range(recipe.train.steps):
        if step == warmup:
            start, counted = time.perf_counter(), 0
        batch = next(batches, None)
        if batch is None:  # next epoch, as the engine does
            batches = iter(job.loader)
            batch = next(batches)
        loss, _ = module(batch)
        loss.backward()
        if recipe.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(module.parameters(), recipe.optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if after_step is not None:
            after_step()
        counted += len(batch)
    return counted / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="clip-tiny")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=200)
    args = parser.parse_args()
    log_every = 5
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data_root, tokenizer = prepare(root, args.images)
        overrides = [
            f"data.root={data_root}", f"model.text.vocab_size={tokenizer.vocab_size}",
            f"train.steps={args.steps}", f"train.batch_size={args.batch_size}", f"train.num_workers={args.workers}",
            f"train.log_every={log_every}", "train.checkpoint_every=0", "train.progress=false", "train.device=cpu",
        ]  # fmt: skip
        recipe = load_recipe(args.recipe, overrides)
        engine, bare = [], []
        for i in range(args.rounds):
            # alternate which goes first, so that neither always inherits a warm (or busy) machine
            if i % 2:
                bare.append(bare_rate(recipe, tokenizer, warmup=log_every))
                engine.append(engine_rate(recipe, tokenizer, root / f"run{i}", warmup=log_every))
            else:
                engine.append(engine_rate(recipe, tokenizer, root / f"run{i}", warmup=log_every))
                bare.append(bare_rate(recipe, tokenizer, warmup=log_every))
            print(f"round {i + 1}: engine {engine[-1]:8.1f} samples/s   bare {bare[-1]:8.1f} samples/s", flush=True)
    ratio = max(engine) / max(bare)
    median_ratio = statistics.median(engine) / statistics.median(bare)
    setup = f"{args.steps} steps of batch {args.batch_size}, {args.workers} loader workers"
    print(f"recipe {args.recipe}: {setup}, {torch.get_num_threads()} threads")
    verdict = "PASS" if ratio >= 0.9 else "FAIL"
    print(f"engine / bare samples/s: best {ratio:.3f}, median {median_ratio:.3f}  (target: best >= 0.90 -> {verdict})")
    return 0 if ratio >= 0.9 else 1


if __name__ == "__main__":
    raise SystemExit(main())
