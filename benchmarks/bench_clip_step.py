"""One CLIP ViT-B/32 training step in vlp against transformers' CLIPModel, in one run.

Both models are built from the same configuration (the base ``clip`` recipe: vision 12x768,
text 12x512, embedding 512, 224x224 images) and hold the same weights (vlp's, exported through
:mod:`vlp.interop.clip`), so the step computes the same numbers; the script checks that the
losses agree before timing. A step is forward, the symmetric contrastive loss, backward and a
``torch.optim.AdamW`` step, on the same batch (image-text pairs, texts padded to 77 tokens as
CLIP's tokenizer does), with the same threads, in fp32.

Steps of the two models alternate (vlp first in even rounds, transformers first in odd ones) so
that load from other processes hits both alike; medians are compared, of wall time and of the
process's CPU time (on a machine shared with other jobs the wall times of 2-thread steps swing
by 2x from round to round; the CPU time moves much less). Printed:

- step time of each, and the ratio transformers / vlp (>= 1 means vlp is at least as fast);
- vlp's achieved FLOP/s (FLOPs of one step counted by ``torch.utils.flop_counter``) as a
  fraction of this machine's fp32 matmul throughput, measured here with 2048x2048 matmuls in
  every round (the best is used, as the step times are measured under the same load);
- image-encoding throughput (images/s, inference) of both.

Run: ``.venv/bin/python benchmarks/bench_clip_step.py [--batch 8] [--steps 6] [--threads 2]``.
"""

from __future__ import annotations

import argparse
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


def encode_rate(encode, images: torch.Tensor, rounds: int) -> list[float]:
    rates = []
    with torch.no_grad():
        for _ in range(rounds):
            start = time.perf_counter()
            encode(images)
            rates.append(len(images) / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8, help="image-text pairs per step")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per model (after 2 warm-up steps)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--encode-batch", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} threads, fp32, batch {args.batch}")

    ours, theirs = build()
    batch = make_batch(args.batch)
    with torch.no_grad():  # same weights, same batch: same loss (dropout is 0 in CLIP)
        a, b = vlp_loss(ours, *batch), hf_loss(theirs, *batch)
    print(f"loss       vlp {float(a):.6f}  transformers {float(b):.6f}  |diff| {abs(float(a - b)):.2e}")
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-5, weight_decay=0.2)
    opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=1e-5, weight_decay=0.2)
    runs = {"vlp": (ours, vlp_loss, opt_ours), "transformers": (theirs, hf_loss, opt_theirs)}
    times: dict[str, list[float]] = {"vlp": [], "transformers": []}
    cpu: dict[str, list[float]] = {"vlp": [], "transformers": []}
    peaks = []
    for r in range(args.steps + 2):
        # the matmul peak is sampled in every round, under the same load as the steps around it
        peaks.append(matmul_peak(seconds=0.5))
        order = ["vlp", "transformers"] if r % 2 == 0 else ["transformers", "vlp"]
        for name in order:
            seconds, cpu_seconds = step(*runs[name], batch)
            if r >= 2:  # the first two rounds warm up allocators and kernels
                times[name].append(seconds)
                cpu[name].append(cpu_seconds)
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    for name in ("vlp", "transformers"):
        print(
            f"step       {name:<13} median {med[name] * 1000:8.1f} ms wall (min {min(times[name]) * 1000:.1f}), "
            f"{med_cpu[name] * 1000:.1f} ms CPU"
        )
    print(f"ratio      transformers / vlp step time = {med['transformers'] / med['vlp']:.3f} (>= 1: vlp as fast)")
    print(f"ratio      transformers / vlp CPU time  = {med_cpu['transformers'] / med_cpu['vlp']:.3f}")

    flops = step_flops(ours, vlp_loss, batch)
    peak = max(peaks)
    print(f"flops      {flops / 1e9:.1f} GFLOP per step (forward + backward, counted matmuls/convs/attention)")
    print(f"peak       {peak / 1e9:.1f} GFLOP/s fp32 matmul (2048^3, {args.threads} threads, best of the run)")
    for label, seconds in (("median", med["vlp"]), ("best", min(times["vlp"]))):
        achieved = flops / seconds
        print(f"achieved   {label:<6} vlp step: {achieved / 1e9:.1f} GFLOP/s = {achieved / peak:.1%} of the peak")

    images = batch[0][:1].expand(args.encode_batch, -1, -1, -1).contiguous()
    ours.eval(), theirs.eval()
    rates: dict[str, list[float]] = {"vlp": [], "transformers": []}
    encoders = {"vlp": ours.encode_image, "transformers": lambda x: theirs.get_image_features(pixel_values=x)}
    for r in range(4):
        for name in ["vlp", "transformers"] if r % 2 == 0 else ["transformers", "vlp"]:
            rate = encode_rate(encoders[name], images, 1)
            if r:
                rates[name] += rate
    for name in ("vlp", "transformers"):
        print(f"encode     {name:<13} {statistics.median(rates[name]):7.1f} images/s (batch {args.encode_batch})")


if __name__ == "__main__":
    main()
