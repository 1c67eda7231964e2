"""Images/s of vlp's decode + transform against a plain PIL open + resize baseline.

Both pipelines read the same 640x480 JPEG files and produce 224x224 float
tensors through a DataLoader with the same number of workers and batch size:

- baseline: ``Image.open(path).convert("RGB").resize((224, 224))`` -> tensor;
- vlp: the training pipeline of a ``manifest`` recipe (decode with JPEG draft
  mode + EXIF + RGB conversion, random-resized crop to 224; the workers send
  uint8 pixels and the main process normalizes each batch, so its CPU counts);
- vlp without draft mode, to show where the speed comes from.

Run: ``.venv/bin/python benchmarks/bench_data.py [--images 300] [--workers 2]``.
Prints images/s of each (median of interleaved rounds, and the best) and the
ratio of the medians vlp / baseline (the target is >= 1.5). Wall-clock rates
need an otherwise idle machine; the CPU milliseconds per image printed beside
them (main process + DataLoader workers, and one process without a
DataLoader) hardly move when other processes compete for the cores.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from vlp.config import from_dict
from vlp.data.config import DataConfig
from vlp.data.loader import build_dataset, build_loader
from vlp.data.transforms import to_tensor


def make_photos(folder: Path, count: int, seed: int = 0) -> list[str]:
    """Photo-like 640x480 JPEGs (smooth colour fields plus noise and edges, ~quality 90)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    yy, xx = np.mgrid[0:480, 0:640].astype(np.float32)
    for i in range(count):
        freq = rng.uniform(0.005, 0.03, size=3)
        phase = rng.uniform(0, 6.3, size=3)
        channels = [127 + 100 * np.sin(freq[c] * (xx + 0.7 * yy) + phase[c]) for c in range(3)]
        pixels = np.stack(channels, -1) + rng.normal(0, 12, size=(480, 640, 3))
        for _ in range(6):  # a few hard-edged objects
            x, y = rng.integers(0, 560), rng.integers(0, 400)
            pixels[y : y + rng.integers(20, 80), x : x + rng.integers(20, 80)] = rng.integers(0, 255, size=3)
        name = f"{i:05d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / name, "JPEG", quality=90)
        names.append(name)
    return names


class Baseline(Dataset):
    """What a first attempt looks like: full decode, convert, resize, tensor."""

    def __init__(self, paths: list[str], size: int = 224) -> None:
        self.paths = paths
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        image = Image.open(self.paths[i]).convert("RGB").resize((self.size, self.size), Image.Resampling.BICUBIC)
        return to_tensor(image, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # workers that exited and were joined
    return usage.ru_utime + usage.ru_stime


def images_per_s(make_iter, count: int) -> tuple[float, float]:
    """``(images/s, CPU ms per image)`` of one pass; the CPU time is the main process's and its DataLoader
    workers' together (workers are joined at the end of the pass), which competing processes hardly move."""
    start, cpu = time.perf_counter(), time.process_time() + _children_cpu()
    seen = sum(len(batch) for batch in make_iter())
    elapsed = time.perf_counter() - start
    assert seen == count, f"saw {seen} images, expected {count}"
    return count / elapsed, 1000 * (time.process_time() + _children_cpu() - cpu) / count


def cpu_ms_per_image(dataset: Dataset, count: int) -> float:
    """CPU time of one process decoding + transforming every image (robust to a busy machine)."""
    start = time.process_time()
    for i in range(count):
        dataset[i]
    return 1000 * (time.process_time() - start) / count


def compare(pipelines: dict, count: int, rounds: int) -> dict[str, list[tuple[float, float]]]:
    """``(images/s, CPU ms per image)`` of each pipeline in ``rounds`` interleaved passes (after one warm-up
    pass each; the order turns every round), so that a burst of load from other processes does not favour
    whichever pipeline ran last."""
    for make_iter in pipelines.values():
        images_per_s(make_iter, count)
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in pipelines}
    names = list(pipelines)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            runs[name].append(images_per_s(pipelines[name], count))
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timed rounds")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        names = make_photos(root / "images", args.images)
        lines = [json.dumps({"image": n, "caption": f"photo {i}"}) for i, n in enumerate(names)]
        (root / "manifest_train.jsonl").write_text("\n".join(lines) + "\n")
        size_kb = sum((root / "images" / n).stat().st_size for n in names) / len(names) / 1024
        print(f"{args.images} JPEGs of 640x480 (~{size_kb:.0f} KB), 224x224 crops, {args.workers} workers, "
              f"batch {args.batch_size}")  # fmt: skip

        baseline = Baseline([str(root / "images" / n) for n in names])

        def baseline_iter():
            return DataLoader(baseline, batch_size=args.batch_size, num_workers=args.workers)

        def vlp_iter(draft: bool):
            config = from_dict(DataConfig, {"type": "manifest", "root": str(root), "paths": {"images": "images"},
                                            "transform": {"draft": draft}})  # fmt: skip
            loader = build_loader(config, "train", batch_size=args.batch_size, num_workers=args.workers,
                                  drop_last=False)  # fmt: skip
            return lambda: loader

        pipelines = {"baseline": baseline_iter, "vlp": vlp_iter(True), "no_draft": vlp_iter(False)}
        runs = compare(pipelines, args.images, args.repeats)
        rate = {name: statistics.median(r for r, _ in passes) for name, passes in runs.items()}
        loader_cpu = {name: statistics.median(c for _, c in passes) for name, passes in runs.items()}
        base, fast = rate["baseline"], rate["vlp"]
        config = from_dict(DataConfig, {"type": "manifest", "root": str(root), "paths": {"images": "images"}})
        vlp_dataset = build_dataset(config, "train")
        cpu_base = cpu_fast = float("inf")
        for _ in range(args.repeats):  # interleaved, best of each
            cpu_base = min(cpu_base, cpu_ms_per_image(baseline, args.images))
            cpu_fast = min(cpu_fast, cpu_ms_per_image(vlp_dataset, args.images))
    best = {name: max(r for r, _ in passes) for name, passes in runs.items()}
    labels = {"baseline": "baseline (PIL open + resize)", "no_draft": "vlp, draft mode off", "vlp": "vlp (draft mode)"}
    for name, label in labels.items():
        print(f"{label:<30} {rate[name]:8.1f} images/s median of {args.repeats} (best {best[name]:.1f}), "
              f"{loader_cpu[name]:.2f} CPU ms per image (main process + workers)")  # fmt: skip
    print(
        f"CPU per image through the DataLoader: ratio baseline / vlp {loader_cpu['baseline'] / loader_cpu['vlp']:.2f}x"
    )
    print(f"CPU per image, one process, no DataLoader: baseline {cpu_base:.2f} ms, vlp {cpu_fast:.2f} ms "
          f"(ratio {cpu_base / cpu_fast:.2f}x)")  # fmt: skip
    ratio = fast / base
    print(f"ratio vlp / baseline = {ratio:.2f}x (target >= 1.5x): {'PASS' if ratio >= 1.5 else 'BELOW TARGET'}")
    return 0 if ratio >= 1.5 else 1


if __name__ == "__main__":
    raise SystemExit(main())
