"""Peak memory (RSS) of vlp against a baseline, each case in its own process.

1. One CLIP ViT-B/32 training step (forward, contrastive loss, backward, AdamW), batch ``--batch``, in
   vlp and in transformers' CLIPModel with the same weights (built by ``bench_clip_step.build``). Both
   models are built in each process (to share the weights), the other one is deleted, the peak is reset
   (``/proc/self/clear_refs``), and then the measured model runs ``--steps`` steps.
2. A ``--vectors`` x ``--dim`` float32 embedding index (1M x 512 = 2 GB of rows): vlp's
   ``vlp index build`` path without images (``EmbeddingWriter.write_shard`` per shard of
   ``--shard-size`` rows, then ``index_embeddings`` with an exact index, then the index opened), against
   a plain numpy loop that normalises and ``np.save``s the same shards and writes the same paths file.
   Both generate each shard's rows from the same seeded generator when they write it.

Printed: the peak RSS of each case (``VmHWM``), the RSS when the measured part started (imports, model
weights), the peak above that start, and the ratios vlp / baseline; for the index build also wall and CPU
seconds (``time.process_time``) and their ratio plain / vlp (>= 1: vlp as fast).

Run: ``.venv/bin/python benchmarks/bench_memory.py [--vectors 1000000] [--skip clip]`` (about 2-3
minutes on 2 idle cores: two CLIP-B/32 models built per case, 4 GB written to a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def rss_mb(field: str) -> float:
    """``VmHWM`` (peak) or ``VmRSS`` (now) of this process in MiB, from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field} (Linux only)")


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False when the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def shard_rows(index: int, rows: int, dim: int) -> np.ndarray:
    return np.random.default_rng(index).standard_normal((rows, dim), dtype=np.float32)


def case_clip(which: str, batch: int, steps: int, threads: int) -> dict:
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_clip_step import build, hf_loss, make_batch, step, vlp_loss

    torch.set_num_threads(threads)
    ours, theirs = build()
    model, loss = (ours, vlp_loss) if which == "vlp" else (theirs, hf_loss)
    del ours, theirs
    data = make_batch(batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.2)
    start, reset = rss_mb("VmRSS"), reset_peak()
    for _ in range(steps):
        step(model, loss, optimizer, data)
    return {"start": start, "peak": rss_mb("VmHWM"), "reset": reset}


def case_index(which: str, folder: Path, count: int, dim: int, shard: int) -> dict:
    from vlp.io.embeddings import EmbeddingWriter
    from vlp.tasks.retrieval.index import IndexOptions, index_embeddings

    # both cases import vlp, so that the start RSS (numpy, torch) is the same; the plain loop uses none of it
    start, reset = rss_mb("VmRSS"), reset_peak()
    wall, cpu = time.perf_counter(), time.process_time()
    if which == "vlp":
        writer = EmbeddingWriter(folder, "vectors", {"task": "index", "shard_size": shard})
        for i, first in enumerate(range(0, count, shard)):
            rows = shard_rows(i, min(shard, count - first), dim)
            writer.write_shard([f"images/{n:08d}.jpg" for n in range(first, first + len(rows))], rows)
        opened = index_embeddings(folder, IndexOptions(index_type="flat"), [], "vectors")
        assert len(opened) == count
    else:
        folder.mkdir(parents=True)
        with (folder / "paths.txt").open("w", encoding="utf-8") as paths:
            for i, first in enumerate(range(0, count, shard)):
                rows = shard_rows(i, min(shard, count - first), dim)
                rows /= np.linalg.norm(rows, axis=1, keepdims=True)
                np.save(folder / f"embeddings-{i:05d}.npy", rows)
                paths.write("".join(f"images/{n:08d}.jpg\n" for n in range(first, first + len(rows))))
    return {"start": start, "peak": rss_mb("VmHWM"), "reset": reset, "wall": time.perf_counter() - wall,
            "cpu": time.process_time() - cpu}  # fmt: skip


def run_case(args: argparse.Namespace, case: str, work: Path) -> dict:
    """Run one case in a fresh interpreter; its last stdout line is the JSON result."""
    command = [sys.executable, __file__, "--case", case, "--work", str(work), "--vectors", str(args.vectors),
               "--dim", str(args.dim), "--shard-size", str(args.shard_size), "--batch", str(args.batch),
               "--steps", str(args.steps), "--threads", str(args.threads)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"case {case} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(title: str, results: dict[str, dict], ours: str, base: str) -> None:
    print(f"\n{title}")
    for name, r in results.items():
        extra = f", {r['wall']:.1f} s wall, {r['cpu']:.1f} s CPU" if "wall" in r else ""
        print(f"  {name:<22} peak {r['peak']:8.0f} MiB, at start {r['start']:7.0f} MiB, "
              f"peak above start {r['peak'] - r['start']:7.0f} MiB{extra}")  # fmt: skip
    a, b = results[ours], results[base]
    print(f"  ratio vlp / baseline: peak {a['peak'] / b['peak']:.2f}, peak above start "
          f"{(a['peak'] - a['start']) / max(b['peak'] - b['start'], 1e-9):.2f}")  # fmt: skip
    if "wall" in a:
        print(
            f"  speed plain / vlp (>= 1: vlp as fast): wall {b['wall'] / a['wall']:.2f}, CPU {b['cpu'] / a['cpu']:.2f}"
        )
    if not all(r["reset"] for r in results.values()):
        print("  (the kernel refused to reset the peak: peaks include the model building)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--shard-size", type=int, default=4096, help="rows per shard (vlp index build's default)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2, help="CLIP training steps per case (AdamW state included)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip", nargs="*", default=[], choices=["clip", "index"])
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:  # a child process: one case, its result as the last line
        kind, which = args.case.split(":")
        if kind == "clip":
            result = case_clip(which, args.batch, args.steps, args.threads)
        else:
            result = case_index(which, Path(args.work) / which, args.vectors, args.dim, args.shard_size)
        print(json.dumps(result))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        if "clip" not in args.skip:
            clip = {name: run_case(args, f"clip:{name}", Path(tmp)) for name in ("vlp", "transformers")}
            report(f"1. CLIP ViT-B/32 training step, batch {args.batch}, {args.steps} steps, {args.threads} threads",
                   clip, "vlp", "transformers")  # fmt: skip
        if "index" not in args.skip:
            built = {}
            for name in ("vlp", "plain"):
                built[name] = run_case(args, f"index:{name}", Path(tmp))
                for file in (Path(tmp) / name).iterdir():  # free the disk before the next case
                    file.unlink()
            report(f"2. index build, {args.vectors} x {args.dim} float32 rows in shards of {args.shard_size}",
                   {"vlp (exact index)": built["vlp"], "plain numpy loop": built["plain"]}, "vlp (exact index)",
                   "plain numpy loop")  # fmt: skip
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
