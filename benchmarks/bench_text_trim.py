"""Trimmed text (``model.text_trim``, the default 8) against the same model padded to 77, in one run.

A text batch is cut to its longest real length rounded up to a multiple of 8 before the text tower
(:mod:`vlp.text.trim`); the outputs are the padded ones (the script checks the loss and embeddings
first). Two CLIP sizes, both with captions of 8-30 real tokens padded to 77 with <|endoftext|> as
CLIP's tokenizer does (drawn as in ``bench_clip_step.py``):

- ``clip-tiny``: the ``clip-tiny`` recipe (2x32 towers, 32x32 images; positions raised to 77), batch 128;
- ``clip-b32``: the ``clip`` recipe (ViT-B/32 and the 12x512 text tower, 224x224 images), batch 8.

For each: the training step (forward, symmetric contrastive loss, backward, AdamW) and text-encoding
throughput (``encode_text`` without gradients, texts/s). The same model instance runs both ways,
switched by ``model.cfg.text_trim`` (8 vs 0); rounds alternate which goes first and medians are
compared. Printed ratios are padded time / trimmed time (> 1: trimming is faster).

Run: ``.venv/bin/python benchmarks/bench_text_trim.py [--steps 6] [--threads 2] [--only clip-tiny]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

SIZES = {
    # name: (recipe, overrides, train batch, image side)
    "clip-tiny": ("clip-tiny", {"model.text.max_positions": 77}, 128, 32),
    "clip-b32": ("clip", {}, 8, 224),
}


def captions(batch: int, vocab: int, seed: int = 0, length: int = 77) -> tuple[torch.Tensor, torch.Tensor]:
    """ids ``(B, 77)`` of 8-30 real tokens ([SOT] ... [EOT], the top two ids) padded with [EOT], and the mask."""
    g = torch.Generator().manual_seed(seed)
    sot, eot = vocab - 2, vocab - 1
    ids = torch.full((batch, length), eot, dtype=torch.long)
    mask = torch.zeros(batch, length, dtype=torch.bool)
    for i in range(batch):
        n = int(torch.randint(8, 31, (1,), generator=g))
        ids[i, :n] = torch.randint(0, sot, (n,), generator=g)
        ids[i, 0], ids[i, n - 1] = sot, eot
        mask[i, :n] = True
    return ids, mask


def clip_loss(model, images, ids, mask) -> torch.Tensor:
    logits = model.logit_scale.exp() * model.encode_text(ids, mask) @ model.encode_image(images).t()
    labels = torch.arange(len(ids))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def train_step(model, optimizer, batch) -> float:
    start = time.perf_counter()
    clip_loss(model, *batch).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def encode_texts(model, ids, mask) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        model.encode_text(ids, mask)
    return time.perf_counter() - start


def alternate(model, run, rounds: int, warmup: int = 2) -> dict[int, list[float]]:
    """Seconds of ``run()`` with ``text_trim`` 8 and 0, alternating which goes first; warm-up rounds dropped."""
    times: dict[int, list[float]] = {8: [], 0: []}
    for r in range(rounds + warmup):
        for trim in (8, 0) if r % 2 == 0 else (0, 8):
            model.cfg.text_trim = trim
            seconds = run()
            if r >= warmup:
                times[trim].append(seconds)
    model.cfg.text_trim = 8
    return times


def bench(name: str, steps: int, encode_batch: int) -> None:
    import vlp

    recipe, overrides, batch_size, side = SIZES[name]
    torch.manual_seed(0)
    model = vlp.create_model(recipe, **overrides).train()
    vocab = model.cfg.text.vocab_size
    ids, mask = captions(batch_size, vocab)
    images = torch.randn(batch_size, 3, side, side, generator=torch.Generator().manual_seed(1))
    kept = int(mask.sum(1).max())
    print(f"{name}: text {model.cfg.text.layers}x{model.cfg.text.dim}, batch {batch_size}, "
          f"longest caption {kept} -> {-(-kept // 8) * 8} of 77 positions")  # fmt: skip
    with torch.no_grad():
        losses = {}
        for trim in (8, 0):
            model.cfg.text_trim = trim
            losses[trim] = float(clip_loss(model, images, ids, mask))
    print(f"  loss        trimmed {losses[8]:.6f}  padded {losses[0]:.6f}  |diff| {abs(losses[8] - losses[0]):.1e}")

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.2)
    t = alternate(model, lambda: train_step(model, optimizer, (images, ids, mask)), steps)
    step = {k: statistics.median(v) for k, v in t.items()}
    print(f"  train step  trimmed {step[8] * 1000:8.1f} ms  padded {step[0] * 1000:8.1f} ms  "
          f"ratio padded / trimmed = {step[0] / step[8]:.2f}")  # fmt: skip

    model.eval()
    text_ids, text_mask = captions(encode_batch, vocab, seed=2)
    t = alternate(model, lambda: encode_texts(model, text_ids, text_mask), max(steps, 4))
    rate = {k: encode_batch / statistics.median(v) for k, v in t.items()}
    print(f"  encode text trimmed {rate[8]:8.1f} texts/s  padded {rate[0]:8.1f} texts/s  "
          f"ratio trimmed / padded = {rate[8] / rate[0]:.2f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6, help="timed rounds per size (after 2 warm-up rounds)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--encode-batch", type=int, default=256, help="texts per encode_text call")
    parser.add_argument("--only", choices=sorted(SIZES), help="one size only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, fp32; captions of 8-30 tokens padded to 77")
    for name in [args.only] if args.only else SIZES:
        bench(name, args.steps, args.encode_batch)


if __name__ == "__main__":
    main()
