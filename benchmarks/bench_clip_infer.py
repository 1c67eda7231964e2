"""CLIP ViT-B/32 inference: image and text encoding throughput of vlp against transformers' CLIPModel, in one run.

Both models are built from the same configuration (the base ``clip`` recipe) and hold the same weights
(vlp's, exported through :mod:`vlp.interop.clip`, as in ``bench_clip_step.py``); the script checks that the
embeddings agree (1e-4) before timing. Everything runs under ``torch.inference_mode()`` in fp32 with the same
threads. Compared, on one batch of images (224x224) and one of captions (8-30 real tokens padded to 77 with
<|endoftext|>, as CLIP's tokenizer does):

- images/s: vlp ``encode_image`` vs transformers ``get_image_features``;
- texts/s: vlp ``encode_text`` with ``model.text_trim: 8`` (the default: the batch cut to its longest
  caption) and with ``text_trim: 0`` (all 77 positions, the identical computation) vs ``get_text_features``;
- the same for vlp with ``vlp.models.quantize.quantize_linear_int8`` (dynamic int8 linear layers: an
  explicit, approximate option, not a default).

vlp's exact levers: the last layer of each tower runs for the pooled token's query only ([CLS], the end
token), the attention bias is built once per tower, the text batch is trimmed, and the blocks' inference fast
path (:meth:`vlp.layers.block.TransformerBlock._forward_inference`: oneDNN GEMMs with the bias, activation and
residual add fused) replaces the plain path; ``vlp plain`` is vlp with that fast path off
(:func:`vlp.layers.linear.plain_inference`), timed in the same rounds. Rounds rotate the order of
the runs and medians are compared (wall time; CPU time of this process as well, steadier under load).

int8 changes the numbers, so its effect on accuracy is measured and printed: the cosine between int8 and
fp32 embeddings of CLIP-B/32 (random weights: a check of the arithmetic, not of a task), and, unless
``--no-accuracy``, zero-shot top-1 (by colour) and retrieval R@1 of clip-tiny briefly pretrained here on a
rendered ShapesWorld (``vlp data synth``, ``vlp pretrain clip-tiny``, then ``vlp eval zeroshot`` and
``vlp eval retrieval --dual``, each with and without ``--int8``).

Run: ``.venv/bin/python benchmarks/bench_clip_infer.py [--batch 32] [--rounds 5] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench_clip_step import build, make_batch


def timed(fn) -> tuple[float, float]:
    """``(wall seconds, CPU seconds of this process)`` of ``fn()`` under inference mode."""
    start, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        fn()
    return time.perf_counter() - start, time.process_time() - cpu


def rotate(runs: dict, rounds: int, warmup: int = 1) -> tuple[dict[str, float], dict[str, float]]:
    """Median wall and CPU seconds of each run; each round starts one place later in the list."""
    names = list(runs)
    wall: dict[str, list[float]] = {k: [] for k in names}
    cpu: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds + warmup):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            seconds, cpu_seconds = timed(runs[name])
            if r >= warmup:
                wall[name].append(seconds)
                cpu[name].append(cpu_seconds)
    return {k: statistics.median(v) for k, v in wall.items()}, {k: statistics.median(v) for k, v in cpu.items()}


def report(kind: str, unit: str, size: int, wall: dict, cpu: dict, baseline: str = "transformers") -> None:
    for name in wall:
        print(f"{kind:<6} {name:<22} {size / wall[name]:8.1f} {unit}/s wall  {size / cpu[name]:8.1f} per CPU-s")
    for name in wall:
        if name != baseline:
            print(
                f"ratio  {kind} {name} / {baseline}: {wall[baseline] / wall[name]:.2f} wall, "
                f"{cpu[baseline] / cpu[name]:.2f} CPU (target >= 1.3)"
            )


def plain(fn):
    """``fn`` with the blocks' inference fast path off."""
    from vlp.layers.linear import plain_inference

    def run():
        with plain_inference():
            return fn()

    return run


def set_trim(model, trim: int, fn):
    def run():
        model.cfg.text_trim = trim
        return fn()

    return run


def tiny_accuracy(images: int, steps: int, threads: int) -> None:
    """Zero-shot top-1 and retrieval R@1 of a briefly pretrained clip-tiny, fp32 and int8, through the CLI."""
    from vlp.cli import main

    def run(*argv: str) -> None:
        if main(list(argv)) != 0:
            raise SystemExit(f"vlp {' '.join(argv)} failed")

    with tempfile.TemporaryDirectory() as tmp:
        world, out = Path(tmp) / "shapes", Path(tmp) / "clip"
        run("data", "synth", "--out", str(world), "--images", str(images), "--size", "32", "--seed", "0")
        ann = world / "annotations" / "dataset_shapes.json"
        run("tokenizer", "train", "--input", str(ann), "--out", str(world / "tokenizer"), "--vocab-size", "1000")
        run("pretrain", "clip-tiny", "--out", str(out), "--steps", str(steps), "--set", f"data.root={world}",
            "--set", f"model.tokenizer={world / 'tokenizer'}", "--set", "train.progress=false",
            "--set", "train.tensorboard=false", "--set", "train.num_workers=0")  # fmt: skip
        torch.set_num_threads(threads)  # the CLI may have set its own
        scores = {}
        for int8 in (False, True):
            flag = ["--int8"] if int8 else []
            ev = Path(tmp) / f"eval-{int8}"
            run("eval", "zeroshot", "--model", str(out), "--data", str(world), "--by", "color",
                "--device", "cpu", "--out", str(ev / "zs"), *flag)  # fmt: skip
            run("eval", "retrieval", "--model", str(out), "--data", str(world), "--dual",
                "--device", "cpu", "--out", str(ev / "ret"), *flag)  # fmt: skip
            zs = json.loads((ev / "zs" / "results.json").read_text())["metrics"]
            ret = json.loads((ev / "ret" / "results.json").read_text())["metrics"]
            scores[int8] = {"zero-shot top-1": zs["top1"], "i2t R@1": ret["i2t_r1"], "t2i R@1": ret["t2i_r1"]}
    print(f"accuracy clip-tiny, {steps} steps on {images} ShapesWorld images (fp32 -> int8, change):")
    for key, value in scores[False].items():
        print(f"accuracy   {key:<16} {value:6.2f} -> {scores[True][key]:6.2f}  ({scores[True][key] - value:+.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32, help="images and captions per encode call")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (after 1 warm-up round)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-accuracy", action="store_true", help="skip the clip-tiny accuracy of int8")
    parser.add_argument("--tiny-images", type=int, default=600, help="ShapesWorld images for clip-tiny")
    parser.add_argument("--tiny-steps", type=int, default=200, help="clip-tiny pretraining steps (batch 32)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, fp32, inference mode, batch {args.batch}")

    from vlp.models.quantize import quantize_linear_int8

    ours, theirs = build()
    ours.eval(), theirs.eval()
    int8 = quantize_linear_int8(ours)
    images, ids, mask = make_batch(args.batch, seed=1)
    hf_mask = mask.long()
    with torch.inference_mode():
        ref_image = theirs.get_image_features(pixel_values=images).pooler_output
        ref_text = theirs.get_text_features(input_ids=ids, attention_mask=hf_mask).pooler_output
        ref_image, ref_text = (torch.nn.functional.normalize(x, dim=-1) for x in (ref_image, ref_text))
        image, q_image = ours.encode_image(images), int8.encode_image(images)
        text, q_text = ours.encode_text(ids, mask), int8.encode_text(ids, mask)
        plain_image, plain_text = plain(lambda: (ours.encode_image(images), ours.encode_text(ids, mask)))()
    fast = max(float((image - plain_image).abs().max()), float((text - plain_text).abs().max()))
    print(f"check  embeddings vlp fast path vs plain path: max |diff| {fast:.1e}")
    diff = max(float((image - ref_image).abs().max()), float((text - ref_text).abs().max()))
    print(f"check  embeddings vlp vs transformers: max |diff| {diff:.1e}")
    if diff > 1e-4:
        raise SystemExit(f"embeddings differ by {diff:.1e} > 1e-4: the models do not compute the same thing")
    for kind, a, b in (("image", image, q_image), ("text", text, q_text)):
        cos = (a * b).sum(-1)
        mean, low = float(cos.mean()), float(cos.min())
        print(f"int8   CLIP-B/32 {kind} embeddings: cosine to fp32 mean {mean:.5f}, min {low:.5f}")

    wall, cpu = rotate({
        "vlp": lambda: ours.encode_image(images),
        "vlp plain": plain(lambda: ours.encode_image(images)),
        "vlp int8": lambda: int8.encode_image(images),
        "transformers": lambda: theirs.get_image_features(pixel_values=images),
    }, args.rounds)  # fmt: skip
    report("image", "images", args.batch, wall, cpu)
    longest = int(mask.sum(1).max())
    print(f"text   captions of 8-30 tokens, longest {longest}: trimmed to {-(-longest // 8) * 8} of 77 positions")
    wall, cpu = rotate({
        "vlp trimmed": set_trim(ours, 8, lambda: ours.encode_text(ids, mask)),
        "vlp padded": set_trim(ours, 0, lambda: ours.encode_text(ids, mask)),
        "vlp plain padded": plain(set_trim(ours, 0, lambda: ours.encode_text(ids, mask))),
        "vlp int8 trimmed": set_trim(int8, 8, lambda: int8.encode_text(ids, mask)),
        "transformers": lambda: theirs.get_text_features(input_ids=ids, attention_mask=hf_mask),
    }, args.rounds)  # fmt: skip
    ours.cfg.text_trim = int8.cfg.text_trim = 8
    report("text", "texts", args.batch, wall, cpu)
    if not args.no_accuracy:
        tiny_accuracy(args.tiny_images, args.tiny_steps, args.threads)


if __name__ == "__main__":
    main()
