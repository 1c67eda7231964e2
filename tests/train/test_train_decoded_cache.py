"""``vlp pretrain``'s path with the decoded-image store and its prefetch thread trains exactly as without."""

from __future__ import annotations

import json
import os

import numpy as np
import torch
from PIL import Image

from vlp.recipe import load_recipe
from vlp.text import Tokenizer
from vlp.train.engine import Trainer
from vlp.train.jobs import build_pretraining_job
from vlp.train.logging import read_metrics
from vlp.train.rng import seed_everything


def _karpathy(root) -> list[str]:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    entries, captions = [], []
    for i in range(12):
        pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"{i}.jpg", quality=90)
        sentences = [{"raw": f"picture {i} {word}"} for word in ("red", "blue")]
        captions += [s["raw"] for s in sentences]
        entries.append({"filename": f"{i}.jpg", "imgid": i, "split": "train", "sentences": sentences})
    (root / "dataset.json").write_text(json.dumps({"images": entries}))
    return captions


def _train(tmp_path, tokenizer, cache: str) -> list[float]:
    overrides = [
        "data.type=karpathy", f"data.root={tmp_path / 'data'}", "data.paths.annotations=dataset.json",
        "data.paths.images=images", "data.options.restval=false", "data.transform.hflip=0.5",
        f"model.text.vocab_size={tokenizer.vocab_size}", "train.steps=5", "train.batch_size=4",
        "train.num_workers=2", "train.log_every=1", "train.checkpoint_every=0", "train.progress=false",
        "train.device=cpu", "train.tensorboard=false", f"data.decoded_cache={cache}",
    ]  # fmt: skip
    recipe = load_recipe("clip-tiny", overrides)
    seed_everything(recipe.train.seed)
    job = build_pretraining_job(recipe, tokenizer=tokenizer)
    assert job.loader.prefetch_thread == bool(cache)  # two workers would share the patched 2 cores
    run = tmp_path / f"run{bool(cache)}"
    Trainer(job.module, job.loader, train=job.train, optim=job.optim, schedule=job.schedule, run_dir=run,
            recipe=job.recipe).fit()  # fmt: skip
    return [r["loss"] for r in read_metrics(run / "metrics.jsonl")]


def test_store_and_prefetch_thread_train_the_same_losses(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    tokenizer = Tokenizer.train(_karpathy(tmp_path / "data"), vocab_size=60)
    plain = _train(tmp_path, tokenizer, "")
    stored = _train(tmp_path, tokenizer, str(tmp_path / "cache"))
    assert len(plain) == 5 and plain == stored  # bit for bit, random crops and flips included
