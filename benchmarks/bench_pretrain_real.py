"""Pretraining on real-format files: ``vlp pretrain``'s path against a plain PyTorch loop.

The data set is written first, in the Karpathy layout (``dataset.json`` + a folder of JPEGs): ``--images``
64x64 JPEGs (default 3,000), 5 captions each, one training sample per (image, caption). Every side trains
a CLIP of two 2-layer 128-wide towers (patch 8, 4 heads, MLP 512, embedding 128; 887k parameters on both
sides) at batch 128 with AdamW, with the same torch threads:

- vlp:        clip-tiny at those sizes, data type ``karpathy``, run as ``vlp pretrain`` runs it:
              :func:`vlp.train.jobs.build_pretraining_job` (``build_loader`` over the JPEG files, with
              ``train.num_workers`` = ``--workers``, the recipe default 2) + :class:`vlp.train.engine.Trainer`,
              with ``data.decoded_cache`` (the decoded-image store, in a temporary folder);
- vlp-decode: the same without the store (every JPEG decoded each time it is drawn);
- plain:      the same shapes in ~120 lines of plain PyTorch (``nn.TransformerEncoder``), over tensors
              decoded once into memory: every image a normalized float tensor, every caption tokenized once
              (padded to the longest caption), a random batch of (image, caption) pairs per step, symmetric
              InfoNCE, grad clipping, ``torch.optim.AdamW`` with its defaults.

Each run is timed from step ``--warmup`` to the start of its last step, so start-up (the plain loop's
decode, vlp's store build, the engine's final checkpoint) is left out alike; the store build is printed
separately. Every round runs each side once, each going first in turn. Two clocks: wall time, and this
process's CPU time (``time.process_time``: all its threads, not loader worker processes). The ratios
printed are medians over rounds of samples per second, vlp / plain.

vlp's training transform is set to ``train_crop: resize``: the images already are 64x64, so every side
sees each image as stored (the plain loop has no augmentation). ``--augment`` keeps vlp's random resized
crop (more work for vlp: a PIL crop per sample).

    python benchmarks/bench_pretrain_real.py [--images 3000] [--steps 30] [--rounds 3] [--threads 2] [--cache both]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn

from bench_engine import TimedLoader  # the same clocked pass-through loader as the engine benchmark
from vlp.recipe import load_recipe
from vlp.train.engine import Trainer
from vlp.train.jobs import build_pretraining_job
from vlp.train.rng import seed_everything

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black", "gray", "pink"]
SHAPES = ["circle", "square", "triangle", "bar"]
WHERE = ["on the left", "on the right", "at the top", "at the bottom", "in the middle"]


# ---------------------------------------------------------------------------------------------- data
def write_karpathy(root: Path, images: int, seed: int = 0) -> list[str]:
    """``images`` 64x64 JPEGs under ``root/images`` and ``root/dataset.json``; returns every caption."""
    rng = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    entries, captions = [], []
    for i in range(images):
        top, bottom = rng.choice(COLOURS), rng.choice(COLOURS)
        image = Image.new("RGB", (64, 64), top)
        draw = ImageDraw.Draw(image)
        draw.rectangle((0, 32, 63, 63), fill=bottom)
        shapes = []
        for _ in range(rng.randint(1, 3)):
            colour, shape = rng.choice(COLOURS), rng.choice(SHAPES)
            x, y, r = rng.randint(8, 56), rng.randint(8, 56), rng.randint(4, 12)
            box = (x - r, y - r, x + r, y + r)
            if shape == "circle":
                draw.ellipse(box, fill=colour)
            elif shape == "triangle":
                draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=colour)
            elif shape == "bar":
                draw.rectangle((x - r, y - 2, x + r, y + 2), fill=colour)
            else:
                draw.rectangle(box, fill=colour)
            shapes.append((colour, shape, WHERE[min(4, (x // 22) + (2 if y > 40 else 0))]))
        name = f"{i:06d}.jpg"
        image.save(root / "images" / name, quality=90)
        sentences = []
        for k in range(5):
            colour, shape, where = shapes[k % len(shapes)]
            words = [rng.choice(["a", "one", "the"]), colour, shape, where, "above a", bottom, "ground"]
            if k % 2:
                words += ["under a", top, "sky", "with", str(len(shapes)), "shapes", "in", "all"]
            sentences.append({"raw": " ".join(words)})
            captions.append(sentences[-1]["raw"])
        entries.append({"filename": name, "imgid": i, "split": "train", "sentences": sentences})
    (root / "dataset.json").write_text(json.dumps({"dataset": "bench", "images": entries}))
    return captions


# ------------------------------------------------------------------------------------- plain loop
class Tower(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp: int, causal: bool) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(width, heads, mlp, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True, layer_norm_eps=1e-5)  # fmt: skip
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width, eps=1e-5)
        self.causal = causal

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        n = x.shape[1]
        # boolean like the padding mask (True = masked): mixing float and bool masks takes a slower path
        mask = torch.ones(n, n, dtype=torch.bool).triu(1) if self.causal else None
        return self.norm(self.blocks(x, mask=mask, src_key_padding_mask=pad, is_causal=self.causal))


class PlainCLIP(nn.Module):
    def __init__(self, vocab: int, width: int = 128, layers: int = 2, heads: int = 4, mlp: int = 512,
                 image: int = 64, patch: int = 8, embed: int = 128, positions: int = 64) -> None:  # fmt: skip
        super().__init__()
        self.patch = nn.Conv2d(3, width, patch, patch, bias=False)
        self.cls = nn.Parameter(torch.randn(width) * 0.02)
        self.image_pos = nn.Parameter(torch.randn((image // patch) ** 2 + 1, width) * 0.02)
        self.image_pre = nn.LayerNorm(width)
        self.vision = Tower(width, layers, heads, mlp, causal=False)
        self.words = nn.Embedding(vocab, width)
        self.text_pos = nn.Parameter(torch.randn(positions, width) * 0.01)
        self.text = Tower(width, layers, heads, mlp, causal=True)
        self.image_proj = nn.Linear(width, embed, bias=False)
        self.text_proj = nn.Linear(width, embed, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, images: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.patch(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(len(x), 1, -1), x], 1) + self.image_pos
        image = self.image_proj(self.vision(self.image_pre(x))[:, 0])
        t = self.text(self.words(ids) + self.text_pos[: ids.shape[1]], pad=~mask)
        last = mask.sum(1) - 1  # pooled at the last real token ([SEP])
        text = self.text_proj(t[torch.arange(len(t)), last])
        image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
        logits = self.logit_scale.clamp(max=math.log(100)).exp() * image @ text.T
        target = torch.arange(len(logits))
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def decode_all(root: Path, tokenizer: Any, max_len: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list]:
    """Every image decoded and normalized once, every caption tokenized once; pairs = (image, caption)."""
    data = json.loads((root / "dataset.json").read_text())
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)
    images, texts, pairs = [], [], []
    for i, entry in enumerate(data["images"]):
        with Image.open(root / "images" / entry["filename"]) as im:
            pixels = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.uint8).copy())
        images.append((pixels.permute(2, 0, 1).float() / 255 - mean) / std)
        for s in entry["sentences"]:
            pairs.append((i, len(texts)))
            texts.append(s["raw"])
    tokens = tokenizer(texts, max_length=max_len, padding="longest")
    return torch.stack(images), tokens.input_ids, tokens.attention_mask.bool(), pairs


def run_plain(memory: tuple, vocab: int, steps: int, batch: int, warmup: int, lr: float, seed: int) -> tuple:
    images, ids, mask, pairs = memory
    torch.manual_seed(seed)
    model = PlainCLIP(vocab).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.98))
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed)).tolist()
    pair_t = torch.tensor(pairs)
    wall = cpu = 0.0
    for step in range(steps):  # clocked like vlp's: from step `warmup` to the start of the last step
        if step == warmup:
            wall, cpu = -time.perf_counter(), -time.process_time()
        elif step == steps - 1:
            wall, cpu = wall + time.perf_counter(), cpu + time.process_time()
        chosen = pair_t[order[(step * batch) % (len(order) - batch) :][:batch]]
        loss = model(images[chosen[:, 0]], ids[chosen[:, 1]], mask[chosen[:, 1]])
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return wall, cpu, loss.item()


# ------------------------------------------------------------------------------------------- vlp


def run_vlp(recipe: Any, tokenizer: Any, run_dir: Path, warmup: int) -> tuple[float, float, float]:
    seed_everything(recipe.train.seed)
    start = time.perf_counter()
    job = build_pretraining_job(recipe, tokenizer=tokenizer)  # the store is built (or checked) here
    build_s = time.perf_counter() - start
    # batch `steps` is never drawn: the clock stops at the last step's batch, as the plain loop's does
    timed = TimedLoader(job.loader, warmup, recipe.train.steps - 1)
    Trainer(
        job.module, timed, train=job.train, optim=job.optim, schedule=job.schedule, run_dir=run_dir,
        recipe=job.recipe, overwrite=True,
    ).fit()  # fmt: skip
    return timed.wall, timed.cpu, build_s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000, help="JPEGs to write (5 captions each)")
    parser.add_argument("--steps", type=int, default=30, help="steps per run (the first --warmup are not timed)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads, both sides")
    parser.add_argument("--workers", type=int, default=2, help="vlp's train.num_workers (the recipe default: 2)")
    parser.add_argument("--cache", choices=["on", "off", "both"], default="both",
                        help="vlp's data.decoded_cache: on, off, or both side by side")  # fmt: skip
    parser.add_argument("--augment", action="store_true", help="keep vlp's random resized crop")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    timed_samples = (args.steps - 1 - args.warmup) * args.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        captions = write_karpathy(root / "data", args.images)
        print(f"wrote {args.images} JPEGs, {len(captions)} captions in {time.perf_counter() - start:.1f} s", flush=True)
        from vlp.text import Tokenizer

        tokenizer = Tokenizer.train(captions, vocab_size=200)
        size = ["text", "vision"]
        overrides = [
            "data.type=karpathy", f"data.root={root / 'data'}", "data.paths.annotations=dataset.json",
            "data.paths.images=images", "data.image_size=64", "data.max_text_len=32", "data.options.restval=false",
            "model.vision.image_size=64", "model.vision.patch_size=8", "model.embed_dim=128",
            *(f"model.{t}.{k}={v}" for t in size for k, v in (("dim", 128), ("heads", 4), ("mlp_dim", 512))),
            f"model.text.vocab_size={tokenizer.vocab_size}", f"train.steps={args.steps}",
            f"train.batch_size={args.batch_size}", f"train.num_workers={args.workers}", f"train.threads={args.threads}",
            "train.log_every=10", "train.checkpoint_every=0", "train.progress=false", "train.device=cpu",
            "train.tensorboard=false", "schedule.warmup_steps=0",
        ]  # fmt: skip
        if not args.augment:
            overrides.append("data.transform.train_crop=resize")
        recipes = {}
        if args.cache in ("on", "both"):
            recipes["vlp"] = load_recipe("clip-tiny", [*overrides, f"data.decoded_cache={root / 'cache'}"])
        if args.cache in ("off", "both"):
            recipes["vlp-decode"] = load_recipe("clip-tiny", overrides)
        recipe = next(iter(recipes.values()))
        start = time.perf_counter()
        memory = decode_all(root / "data", tokenizer, recipe.data.max_text_len)
        print(f"plain loop: decoded and tokenized into memory in {time.perf_counter() - start:.1f} s", flush=True)
        names = [*recipes, "plain"]
        wall: dict[str, list[float]] = {name: [] for name in names}
        cpu: dict[str, list[float]] = {name: [] for name in names}
        for i in range(args.rounds):
            for name in names[i % len(names) :] + names[: i % len(names)]:  # each goes first in turn
                if name == "plain":
                    w, c, _ = run_plain(memory, tokenizer.vocab_size, args.steps, args.batch_size, args.warmup,
                                        recipe.optim.lr, recipe.train.seed)  # fmt: skip
                else:
                    w, c, build_s = run_vlp(recipes[name], tokenizer, root / f"{name}{i}", args.warmup)
                    print(f"round {i + 1}: {name} data set (and store) ready in {build_s:.1f} s", flush=True)
                wall[name].append(timed_samples / w)
                cpu[name].append(timed_samples / c)
            print(f"round {i + 1}: samples/s " + "  ".join(f"{n} {wall[n][-1]:.1f}" for n in names)
                  + "   samples/CPU-s " + "  ".join(f"{n} {cpu[n][-1]:.1f}" for n in names), flush=True)  # fmt: skip
    print(
        f"{args.images} images x 5 captions, batch {args.batch_size}, {args.steps} steps ({args.warmup} untimed), "
        f"{args.threads} threads, train.num_workers={args.workers}, "
        f"{'random resized crop' if args.augment else 'no augmentation'}; medians of {args.rounds} rounds"
    )
    for name in recipes:
        wall_ratio = statistics.median(wall[name]) / statistics.median(wall["plain"])
        cpu_ratio = statistics.median(cpu[name]) / statistics.median(cpu["plain"])
        print(
            f"{name} / plain: samples/s {statistics.median(wall[name]):.1f} / {statistics.median(wall['plain']):.1f}"
            f" = {wall_ratio:.3f} wall, {cpu_ratio:.3f} by CPU time of this process"
            + (
                f" (leaves out its {args.workers} loader worker processes)"
                if name == "vlp-decode" and args.workers
                else ""
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
