"""One CLIP ViT-B/32 training step in vlp against transformers' CLIPModel, two comparisons in one run.

Both models are built from the same configuration (the base ``clip`` recipe: vision 12x768,
text 12x512, embedding 512, 224x224 images) and hold the same weights (vlp's, exported through
:mod:`vlp.interop.clip`), so the step computes the same numbers; the script checks that the
losses agree before timing. A step is forward, the symmetric contrastive loss, backward and an
AdamW step (``torch.optim.AdamW(fused=True)`` for both sides: the optimizer is not what is compared),
on the same batch: image-text pairs whose captions have 8-30 real tokens, padded to 77 as CLIP's
tokenizer does, with the same threads, in fp32. Three steps run in each round:

- ``vlp padded``: ``model.text_trim: 0``, the text tower reads all 77 positions as transformers does.
  Against transformers this is (a), the identical computation (target: >= 1.1x). vlp computes less
  where the result cannot change: the attention bias is built once per tower, not per layer, and the
  last layer of each tower runs for the pooled token's query only ([CLS] / the end token), as
  :meth:`~vlp.models.VisionLanguageModel.encode_text` / ``encode_image`` do;
- ``vlp trimmed``: ``model.text_trim: 8`` (the default), the text batch cut to its longest caption
  rounded up to a multiple of 8 (:mod:`vlp.text.trim`, exact), and ``encode_text`` then packs the
  rows' real tokens end to end (each attending to its own row only, exact). Against transformers, still
  padded to 77, this is (b), realistic caption lengths (target: >= 1.5x);
- ``transformers``: CLIPModel with ``attn_implementation="sdpa"`` (its fastest CPU path);
- ``vlp padded MKL``: ``vlp padded`` with every linear layer on ``F.linear`` (MKL's GEMM), as transformers
  runs them (:func:`vlp.layers.linear.plain_training`), to show what oneDNN's GEMM adds: vlp trains its
  layers of 256 or more features both ways with oneDNN's GEMM for the forward and the input gradient.

The order of the four rotates from round to round so that load from other processes hits all alike;
medians are compared, of wall time and of the process's CPU time (on a machine shared with other jobs
the wall times of 2-thread steps swing by 2x from round to round; the CPU time moves much less).
Also printed: vlp's achieved FLOP/s (FLOPs of one padded step counted by ``torch.utils.flop_counter``)
as a fraction of this machine's fp32 matmul throughput, measured with 2048x2048 matmuls in every round.
Inference throughput is ``benchmarks/bench_clip_infer.py``.

Run: ``.venv/bin/python benchmarks/bench_clip_step.py [--batch 8] [--steps 6] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
import torch.nn.functional as F


def build(seed: int = 0):
    """``(vlp model, transformers model)`` with identical weights, both in training mode."""
    import transformers

    import vlp
    from vlp.interop.clip import ClipConverter
    from vlp.interop.common import export_state

    torch.manual_seed(seed)
    ours = vlp.create_model("clip").train()
    conv = ClipConverter()
    config = transformers.CLIPConfig.from_dict(conv.hf_config(ours.cfg, {}, "CLIPModel"))
    config._attn_implementation = "sdpa"  # transformers' fastest CPU path
    theirs = transformers.CLIPModel(config).train()
    shapes = {k: v.shape for k, v in theirs.state_dict().items()}
    theirs.load_state_dict(export_state(ours, conv.mapping(ours, "CLIPModel"), shapes), strict=True)
    return ours, theirs


def make_batch(batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images ``(B, 3, 224, 224)``, ids ``(B, 77)`` of 8-30 real tokens padded with <|endoftext|>, and the mask."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, 224, 224, generator=g)
    ids = torch.full((batch, 77), 49407, dtype=torch.long)
    mask = torch.zeros(batch, 77, dtype=torch.bool)
    for i in range(batch):
        n = int(torch.randint(8, 31, (1,), generator=g))
        ids[i, :n] = torch.randint(0, 49406, (n,), generator=g)
        ids[i, 0], ids[i, n - 1] = 49406, 49407
        mask[i, :n] = True
    return images, ids, mask


def contrastive(text: torch.Tensor, image: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    logits = scale.exp() * text @ image.t()
    labels = torch.arange(len(text))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def vlp_loss(model, images, ids, mask) -> torch.Tensor:
    return contrastive(model.encode_text(ids, mask), model.encode_image(images), model.logit_scale)


def hf_loss(model, images, ids, mask) -> torch.Tensor:
    out = model(input_ids=ids, attention_mask=mask.long(), pixel_values=images)
    return contrastive(out.text_embeds, out.image_embeds, model.logit_scale)


def step(model, loss_fn, optimizer, batch) -> tuple[float, float]:
    """One training step; ``(wall seconds, CPU seconds of this process)``. CPU time (all threads) moves
    less than wall time when other processes compete for the cores."""
    start, cpu = time.perf_counter(), time.process_time()
    loss = loss_fn(model, *batch)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start, time.process_time() - cpu


def matmul_peak(seconds: float = 1.0, n: int = 2048) -> float:
    """fp32 matmul FLOP/s of this machine at the current thread count (best of repeated runs)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best


def step_flops(model, loss_fn, batch) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        loss_fn(model, *batch).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def check_losses(ours, theirs, batch, tolerance: float = 1e-4) -> None:
    """Same weights, same batch: the same loss (dropout is 0 in CLIP), padded or trimmed, with autograd on as in
    the timed steps (the GEMMs they run); else stop."""
    losses = {"transformers": hf_loss(theirs, *batch).item()}
    for name, trim in (("vlp padded", 0), ("vlp trimmed", 8)):
        losses[name] = with_trim(trim)(ours, *batch).item()
    ref = losses["transformers"]
    print("loss       " + "  ".join(f"{k} {v:.6f}" for k, v in losses.items()))
    worst = max(abs(v - ref) for v in losses.values())
    print(f"loss       largest |diff| to transformers {worst:.2e}")
    if worst > tolerance:
        raise SystemExit(f"losses differ by {worst:.2e} > {tolerance}: the models do not compute the same step")


def with_trim(trim: int, mkl: bool = False):
    """``vlp_loss`` with ``model.text_trim`` set first (the same model instance runs padded and trimmed); ``mkl``:
    every linear layer on ``F.linear``. The backward runs what the forward recorded, so the switch covers it."""
    from vlp.layers.linear import plain_training

    def loss_fn(model, images, ids, mask) -> torch.Tensor:
        model.cfg.text_trim = trim
        with plain_training() if mkl else contextlib.nullcontext():
            return vlp_loss(model, images, ids, mask)

    return loss_fn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8, help="image-text pairs per step")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per run (after 2 warm-up rounds)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} threads, fp32, batch {args.batch}, captions of 8-30 tokens")

    ours, theirs = build()
    batch = make_batch(args.batch)
    longest = int(batch[2].sum(1).max())
    print(f"text       longest caption {longest} tokens: trimmed to {-(-longest // 8) * 8} of 77 positions")
    check_losses(ours, theirs, batch)
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-5, weight_decay=0.2, fused=True)
    opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=1e-5, weight_decay=0.2, fused=True)
    runs = {
        "vlp padded": (ours, with_trim(0), opt_ours),
        "vlp trimmed": (ours, with_trim(8), opt_ours),
        "transformers": (theirs, hf_loss, opt_theirs),
        "vlp padded MKL": (ours, with_trim(0, mkl=True), opt_ours),
    }
    names = list(runs)
    times: dict[str, list[float]] = {k: [] for k in names}
    cpu: dict[str, list[float]] = {k: [] for k in names}
    peaks = []
    for r in range(args.steps + 2):
        # the matmul peak is sampled in every round, under the same load as the steps around it
        peaks.append(matmul_peak(seconds=0.5))
        for name in names[r % len(names) :] + names[: r % len(names)]:  # each run takes each place in turn
            seconds, cpu_seconds = step(*runs[name], batch)
            if r >= 2:  # the first two rounds warm up allocators and kernels
                times[name].append(seconds)
                cpu[name].append(cpu_seconds)
    ours.cfg.text_trim = 8
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    for name in names:
        print(
            f"step       {name:<13} median {med[name] * 1000:8.1f} ms wall (min {min(times[name]) * 1000:.1f}), "
            f"{med_cpu[name] * 1000:.1f} ms CPU"
        )
    hf = "transformers"
    for label, name, target in (("(a) identical, both padded to 77", "vlp padded", 1.1),
                                ("(b) captions, vlp trimmed vs 77", "vlp trimmed", 1.5)):  # fmt: skip
        print(
            f"ratio      {label}: transformers / vlp = {med[hf] / med[name]:.3f} wall, "
            f"{med_cpu[hf] / med_cpu[name]:.3f} CPU (target >= {target})"
        )
    mkl = "vlp padded MKL"
    print(
        f"ratio      (a) with MKL's GEMM as transformers: transformers / vlp = {med[hf] / med[mkl]:.3f} wall, "
        f"{med_cpu[hf] / med_cpu[mkl]:.3f} CPU; oneDNN's GEMM adds {med[mkl] / med['vlp padded']:.3f}x"
    )

    flops = step_flops(ours, with_trim(0, mkl=True), batch)  # the FLOP counter does not know oneDNN's op
    peak = max(peaks)
    print(f"flops      {flops / 1e9:.1f} GFLOP per padded vlp step (forward + backward, matmuls/convs/attention)")
    print(f"peak       {peak / 1e9:.1f} GFLOP/s fp32 matmul (2048^3, {args.threads} threads, best of the run)")
    for label, seconds in (("median", med["vlp padded"]), ("best", min(times["vlp padded"]))):
        achieved = flops / seconds
        print(f"achieved   {label:<6} vlp step: {achieved / 1e9:.1f} GFLOP/s = {achieved / peak:.1%} of the peak")


if __name__ == "__main__":
    main()
