"""ALBEF's ITC queue, and SigLIP against CLIP's softmax loss, at a budget where the models retrieve.

One ShapesWorld world (the demo's: 3,000 images at 32x32, seed 0), one tokenizer and one tagger (the demo's
image tower trained to name the shape categories in each image, task `tagging`, as the demo and the README's
tour start pretraining from it) are made once; then, each from the tagger's image tower, at the same budget:

- albef-demo with the momentum model (model.momentum 0.995, ALBEF's; the demo runs without it, and the queue
  holds the momentum model's features) and `objectives.itc.queue_size` 0, then QUEUE; evaluated on the test
  split by ITC alone (`--dual`) and by ITC top-k + ITM re-ranking;
- the same model as a dual encoder (objectives replaced by `itc` alone, or by `siglip` with a learnable
  logit bias started at -10 and scale at 10, as SigLIP), evaluated by `--dual`; the run's last logged
  logit bias and scale are printed, to show whether the bias moved.

Runs are sequential, each with one torch thread (a shared 2-core machine). One seed: a single run's
RSUM moves by tens of points between seeds (README, the demo), so differences smaller than that
are not evidence either way. Usage:

    python benchmarks/bench_itc_queue.py [--out runs/itc-queue] [--steps 1000] [--queue 2048]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from demo_world import DEMO_RECIPE, VLP, demo_world, run, world_arguments


def last_logged(run_dir: Path, keys: tuple[str, ...]) -> dict[str, float]:
    """The last value of each of ``keys`` in the run's metrics.jsonl."""
    found: dict[str, float] = {}
    for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        found.update({k: record[k] for k in keys if k in record})
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    world_arguments(parser, "runs/itc-queue")
    parser.add_argument("--steps", type=int, default=1000, help="pretraining steps of 32, every arm")
    # 2,048 < the 2,160 training images, so the queue seldom holds an image twice (a repeat is a positive,
    # by image id), and it is 64 batches old at most, which the teacher at decay 0.995 (~200 steps) spans
    parser.add_argument("--queue", type=int, default=2048, help="objectives.itc.queue_size of the queue arm")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    costs: dict[str, dict[str, float]] = {}
    world = demo_world(out, args.images, args.tag_steps, args.seed, costs)
    data = world.data
    albef = ["model.momentum=0.995"]
    dual = ["model.heads={}"]
    # SigLIP's start: scale 10 (temperature 0.1), bias -10
    siglip = ["objectives={siglip: {weight: 1.0}}", "model.logit_bias=true", "model.temperature=0.1"]
    arms = {
        "albef q=0": albef + ["objectives.itc.queue_size=0"],
        f"albef q={args.queue}": albef + [f"objectives.itc.queue_size={args.queue}"],
        "clip loss": dual + ["objectives={itc: {weight: 1.0}}"],
        "siglip loss": dual + siglip,
    }
    rows = []
    for name, extra in arms.items():
        run_dir = out / name.replace(" ", "_").replace("=", "")
        costs[name] = run(world.pretrain(DEMO_RECIPE, run_dir, args.steps, *extra), Path(f"{run_dir}.log"))
        modes = ["dual", "itm"] if name.startswith("albef") else ["dual"]
        for mode in modes:
            eval_dir = Path(f"{run_dir}-eval-{mode}")
            flags = ["--dual"] if mode == "dual" else []
            cost = run([VLP, "eval", "retrieval", "--model", str(run_dir), "--data", str(data), "--out", str(eval_dir),
                        *flags], Path(f"{eval_dir}.log"))  # fmt: skip
            costs[f"{name} eval {mode}"] = cost
            result = json.loads((eval_dir / "results.json").read_text(encoding="utf-8"))
            m, chance = result["metrics"], result["chance"]
            logged = last_logged(run_dir, ("logit_bias", "logit_scale"))
            rows.append((name, "ITC alone" if mode == "dual" else "ITC + ITM", m, logged))
    print(f"\n{args.images} images at 32x32, seed {args.seed}; tagger {args.tag_steps} steps, pretraining "
          f"{args.steps} steps of 32 per arm, one thread each; test split")  # fmt: skip
    print(f"{'arm':<14} {'ranked by':<10} {'i2t R@1/5/10':>18} {'t2i R@1/5/10':>18} {'RSUM':>6}  logged at the end")
    for name, mode, m, logged in rows:
        i2t = "/".join(f"{m[f'i2t_r{k}']:.1f}" for k in (1, 5, 10))
        t2i = "/".join(f"{m[f't2i_r{k}']:.1f}" for k in (1, 5, 10))
        extra = ", ".join(f"{k} {v:.3f}" for k, v in logged.items()) if name.startswith("siglip") else ""
        print(f"{name:<14} {mode:<10} {i2t:>18} {t2i:>18} {m['rsum']:6.1f}  {extra}")
    print(f"chance RSUM {chance['rsum']:.1f} ({m['n_images']} images, {m['n_texts']} captions)")
    total = sum(c["cpu_s"] for c in costs.values())
    print("\ncost (CPU s / wall s): " + "; ".join(f"{k} {c['cpu_s']:.0f}/{c['wall_s']:.0f}" for k, c in costs.items()))
    print(f"total CPU {total / 60:.1f} min")
    (out / "bench.json").write_text(json.dumps({"args": vars(args), "costs": costs, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
