"""Time ShapesWorld generation: 10,000 images at 64x64 with every format, into a temporary folder.

    .venv/bin/python benchmarks/bench_shapesworld.py [--images 10000] [--size 64] [--workers 2]

Prints images/s and where the time goes. The target is under 60 s on 2 cores.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from vlp.data.shapesworld import generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cpu = time.process_time()
        result = generate(Path(tmp) / "shapes", args.images, args.size, args.seed, workers=args.workers)
        parent_cpu = time.process_time() - cpu
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        worker_cpu = children.ru_utime + children.ru_stime
        size_mb = sum(p.stat().st_size for p in (Path(tmp) / "shapes").rglob("*") if p.is_file()) / 2**20
    t = result["timings"]
    print(f"{args.images} images at {args.size}x{args.size}, {result['workers']} workers: {size_mb:.0f} MiB written")
    print(f"total      {t['total_s']:7.2f} s   {result['images_per_s']:8.0f} images/s")
    print(f"render     {t['render_s']:7.2f} s   (scenes, pixels, PNG, regions, text; in the workers)")
    print(f"annotate   {t['write_s']:7.2f} s   (every annotation file and shard, one format per process)")
    for key, value in t.items():
        if key.startswith("write_") and key != "write_s":
            print(f"  {key[6:-2]:<10}{value:7.2f} s")
    print(f"CPU        {parent_cpu:7.2f} s parent + {worker_cpu:.2f} s worker processes")
    # on a busy machine wall time mostly measures the others; CPU time says what an idle one would take
    ideal = max((parent_cpu + worker_cpu) / max(result["workers"], 1), parent_cpu)
    print(f"idle-machine estimate {ideal:.1f} s ({args.images / ideal:.0f} images/s)")


if __name__ == "__main__":
    main()
