"""BLIP's CapFilt on ShapesWorld with known noise: how well the filter finds the wrong captions, and what
pretraining on the cleaned set gives against the noisy one at the same budget.

Two worlds of the demo's kind (32x32, 3,000 images each by default): a "clean" one (seed S) stands for
BLIP's human-annotated COCO, a "web" one (seed S+1) for the web: its train split is the web set, with
``--noise`` of its captions replaced by a caption of another image (the known noise), and its test split,
with clean captions, is the retrieval benchmark.

1. Tokenizer on the clean world's texts; the demo's tagger (its image tower trained to name the shapes
   in each image, 800 steps) on the clean world.
2. The filter: the demo's ALBEF recipe (``albef-demo.yaml``: ITC + ITM with shape word-swap negatives
   + MLM) pretrained on the CLEAN world from the tagger's image tower (BLIP fine-tunes its filter on
   human captions; its ITM head is the filter).
3. The captioner: a captioning fine-tune of that model on the clean world, with the demo's decoder
   (BLIP's: it shares all but its causal self-attention with the text encoder, ``vlp.demo.steps``).
4. ``vlp data capfilt`` on the web set: precision / recall / AUC of the filter against the known noise
   at ``--threshold`` (BLIP's 0.5) and at the threshold that drops the known noise rate, and how many
   synthetic captions it kept.
5. The same recipe pretrained on the noisy web set and on the CapFilt set (same steps, batch, seed,
   tagger start): the demo's model as a dual encoder with CLIP's loss (the cheapest that retrieves,
   README "ALBEF's queue ... measured"); retrieval of both by their embeddings (``vlp eval retrieval
   --dual``) on the web test split. Two diagnostic sets go through the same: the web captions the filter
   kept without the synthetic ones (the filter's share), and the web set without the known noise (what a
   perfect filter would keep).

Every stage runs as a ``vlp`` subprocess with one torch thread; a stage whose output exists is skipped
(delete --out to start over). One run, one seed. Usage:

    python benchmarks/bench_capfilt.py [--out runs/capfilt] [--images 3000] [--steps 1000] ...
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import yaml

from demo_world import DEMO_RECIPE, VLP, demo_world, render, world_arguments
from demo_world import run as run_one_thread
from vlp.demo.steps import decoder_config
from vlp.demo.training import run_recipe, task_recipe


def run(cmd: list[object], log: Path, costs: dict[str, dict[str, float]], name: str) -> None:
    """Run ``cmd`` with one thread, its output to ``log``; its wall and CPU seconds go to ``costs[name]``."""
    argv = [str(c) for c in cmd]
    print(f"$ {' '.join(argv)}", flush=True)
    costs[name] = run_one_thread(argv, log)
    print(f"  ({costs[name]['cpu_s']:.0f} CPU-s, {costs[name]['wall_s']:.0f} s wall)", flush=True)


def add_noise(web: Path, out: Path, fraction: float, seed: int) -> set[tuple[str, str]]:
    """The web set with ``fraction`` of its training captions swapped for another image's caption.

    Writes ``out/captions_{train,test}.json`` (ALBEF lists, absolute image paths; the test split as
    rendered); returns the noisy ``(image, caption)`` pairs.
    """
    rng = random.Random(seed)
    entries = json.loads((web / "annotations" / "captions_train.json").read_text())
    for e in entries:
        e["image"] = str((web / e["image"]).resolve())
    own: dict[str, set[str]] = {}
    for e in entries:
        own.setdefault(e["image"], set()).add(e["caption"])
    noisy = set()
    for i in rng.sample(range(len(entries)), round(fraction * len(entries))):
        image = entries[i]["image"]
        while True:  # a caption of another image that does not also describe this one word for word
            other = entries[rng.randrange(len(entries))]
            if other["image"] != image and other["caption"] not in own[image]:
                break
        entries[i] = {**entries[i], "caption": other["caption"]}
        noisy.add((image, other["caption"]))
    out.mkdir(parents=True, exist_ok=True)
    (out / "captions_train.json").write_text(json.dumps(entries))
    test = json.loads((web / "annotations" / "captions_test.json").read_text())
    for e in test:
        e["image"] = str((web / e["image"]).resolve())
    (out / "captions_test.json").write_text(json.dumps(test))
    return noisy


ARMS = {
    "pre-noisy": "noisy web set",
    "pre-capfilt": "CapFilt set (filtered web + kept synthetic)",
    "pre-filtered": "filtered web captions alone (no synthetic)",
    "pre-oracle": "web set without the known noise (a perfect filter)",
}


def arms_data(noisy: Path, capfilt: Path, filtered: Path, oracle: Path) -> list[tuple[str, Path]]:
    return list(zip(ARMS, (noisy, capfilt, filtered, oracle)))


def write_captions(folder: Path, entries: list[tuple[str, object, str]]) -> None:
    """An ALBEF caption list ``folder/captions_train.json`` of ``(image path, image id, caption)``, each
    caption of an image once (as CapFilt writes its set)."""
    seen: set[tuple[str, str]] = set()
    rows = []
    for image, image_id, caption in entries:
        if (image, caption) not in seen:
            seen.add((image, caption))
            rows.append({"image": image, "caption": caption, "image_id": image_id})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "captions_train.json").write_text(json.dumps(rows))


def web_texts(decisions: Path, noisy: set[tuple[str, str]]) -> tuple[list[tuple[float, bool]], list[float]]:
    """``(p_match, is_noise)`` of every web caption, and ``p_match`` of every synthetic one."""
    web, synthetic = [], []
    for record in json.loads(decisions.read_text())["images"]:
        for text in record.get("texts", []):
            if text["source"] == "synthetic":
                synthetic.append(text["p_match"])
            else:
                web.append((text["p_match"], (record["key"], text["text"]) in noisy))
    return web, synthetic


def filter_scores(web: list[tuple[float, bool]], synthetic: list[float], threshold: float) -> dict[str, float]:
    """Precision / recall of "dropped" (p_match <= threshold, as CapFilt keeps p > threshold) against the noise."""
    tp = sum(p <= threshold and noise for p, noise in web)
    fp = sum(p <= threshold and not noise for p, noise in web)
    fn = sum(p > threshold and noise for p, noise in web)
    n = len(web)
    kept_synthetic = sum(p > threshold for p in synthetic)
    return {
        "precision": tp / max(tp + fp, 1), "recall": tp / max(tp + fn, 1), "noise": (tp + fn) / max(n, 1),
        "dropped": (tp + fp) / max(n, 1), "kept_web": n - tp - fp, "kept_synthetic": kept_synthetic,
        "synthetic": len(synthetic), "web": n,
    }  # fmt: skip


def noise_auc(web: list[tuple[float, bool]]) -> float:
    """P(a noisy web caption scores a lower p(match) than a clean one): threshold-free (ties count half)."""
    # rank-sum (Mann-Whitney) over the sorted scores: O(n log n), with tied scores sharing their mean rank
    ordered = sorted(web, key=lambda item: item[0])
    n_noise = sum(noise for _, noise in web)
    n_clean = len(web) - n_noise
    if not n_noise or not n_clean:
        return float("nan")
    rank_sum, i = 0.0, 0
    while i < len(ordered):
        j = i
        while j < len(ordered) and ordered[j][0] == ordered[i][0]:
            j += 1
        mean_rank = (i + 1 + j) / 2  # ranks i+1 .. j
        rank_sum += mean_rank * sum(noise for _, noise in ordered[i:j])
        i = j
    # U of the clean captions = pairs (noise, clean) with the clean one ranked higher
    u_noise = rank_sum - n_noise * (n_noise + 1) / 2
    return 1.0 - u_noise / (n_noise * n_clean)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    world_arguments(p, "runs/capfilt")
    p.add_argument("--noise", type=float, default=0.3, help="fraction of web training captions replaced")
    p.add_argument("--filter-steps", type=int, default=1000, help="filter (albef-demo) steps of 32, clean world")
    p.add_argument("--caption-steps", type=int, default=400, help="captioner fine-tuning steps of 32, clean world")
    p.add_argument("--steps", type=int, default=1000, help="pretraining steps of 32, noisy and CapFilt runs")
    p.add_argument("--threshold", type=float, default=0.5, help="CapFilt's threshold (BLIP's 0.5)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wall = time.perf_counter()
    costs: dict[str, dict[str, float]] = {}
    # the clean world is the demo's (in out/data, its tokenizer in out/data/tokenizer, the tagger in out/tagger)
    world = demo_world(out, args.images, args.tag_steps, args.seed, costs)
    clean, web, tok, tagger = world.data, out / "web", world.tokenizer, world.tagger
    noisy_dir, filt, captioner, capfilt = out / "noisy", out / "filter", out / "captioner", out / "capfilt"
    if cost := render(web, args.images, args.seed + 1, out / "web.log", "--formats", "albef,karpathy"):
        costs["render web"] = cost
    common = ["--tokenizer", tok, *world.common]
    from_tagger = ["--set", f"model.tokenizer={tok}", "--set", f"train.init={tagger}",
                   "--set", "train.init_parts=[vision]"]  # fmt: skip
    if not (filt / "summary.json").exists():
        run([VLP, "pretrain", DEMO_RECIPE, "--out", filt, "--set", f"data.root={clean}", "--steps", args.filter_steps,
             *from_tagger, *common], out / "filter.log", costs, "filter (albef-demo, clean)")  # fmt: skip
    if not (captioner / "summary.json").exists():
        # the demo's captioning step (vlp.demo.steps.captioning_step) as a recipe file for `vlp finetune`
        base = run_recipe(filt)
        overrides = {"model.decoder": decoder_config(base["model"]["text"]),
                     "model.decoder_share": "all_but_self_attention", "data.root": str(clean),
                     "data.options": {"format": "captions"}, "optim.lr": 5e-4, "schedule.name": "cosine",
                     "schedule.warmup_steps": max(1, args.caption_steps // 20), "train.steps": args.caption_steps,
                     "train.batch_size": 32, "train.log_every": 25}  # fmt: skip
        recipe = out / "captioner.yaml"
        recipe.write_text(yaml.safe_dump(task_recipe(base, {"type": "captioning", "prompt": ""}, overrides)))
        run([VLP, "finetune", recipe, "--init", filt, "--out", captioner, *common], out / "captioner.log", costs,
            "captioner (clean)")  # fmt: skip
    noisy = add_noise(web, noisy_dir, args.noise, args.seed)
    decisions = capfilt / "decisions_train.json"
    again = ["--resume"] if capfilt.exists() else []  # a stopped or finished CapFilt run continues / is rewritten
    capfilt_cmd = [VLP, "data", "capfilt", "--captioner", captioner, "--filter", filt, "--data", noisy_dir,
                   "--out", capfilt, "--seed", args.seed, "--quiet", "--device", "cpu"]  # fmt: skip
    run([*capfilt_cmd, "--threshold", args.threshold, *again], out / "capfilt.log", costs, "capfilt")
    texts, synthetic = web_texts(decisions, noisy)
    at_blip = filter_scores(texts, synthetic, args.threshold)
    auc = noise_auc(texts)
    # the threshold that drops the known noise rate of web captions (no recompute: --resume rewrites the set)
    ranked = sorted(p for p, _ in texts)
    at_rate_threshold = ranked[min(len(ranked) - 1, max(0, round(at_blip["noise"] * len(ranked)) - 1))]
    at_rate = filter_scores(texts, synthetic, at_rate_threshold)
    threshold = args.threshold
    if at_blip["kept_web"] < 0.5 * (1 - at_blip["noise"]) * at_blip["web"]:
        # a filter that calls most captions "no match" at 0.5 would leave too little to pretrain on
        threshold = at_rate_threshold
        run([*capfilt_cmd, "--threshold", threshold, "--resume"], out / "capfilt-rewrite.log", costs, "capfilt rewrite")
    used = filter_scores(texts, synthetic, threshold)
    # the dual encoder with CLIP's loss from the tagger (README: bench_itc_queue.py), on each set
    dual = ["--set", "model.heads={}", "--set", "objectives={itc: {weight: 1.0}}"]
    # two sets that tell the filter's share from the captioner's: the web captions the filter kept (CapFilt
    # without synthetic captions), and the web set with the known noise removed (what a perfect filter keeps)
    filtered, oracle = out / "filtered", out / "oracle"
    write_captions(
        filtered,
        [
            (r["key"], r["image_id"], t["text"])
            for r in json.loads(decisions.read_text())["images"]
            for t in r.get("texts", [])
            if t["source"] == "web" and t["p_match"] > threshold
        ],
    )
    noisy_entries = json.loads((noisy_dir / "captions_train.json").read_text())
    write_captions(oracle, [(e["image"], e.get("image_id"), e["caption"]) for e in noisy_entries
                            if (e["image"], e["caption"]) not in noisy])  # fmt: skip
    results, sizes = {}, {}
    for name, data in arms_data(noisy_dir, capfilt, filtered, oracle):
        run_dir = out / name
        if not (run_dir / "summary.json").exists():
            run([VLP, "pretrain", DEMO_RECIPE, "--out", run_dir, "--data", data, "--steps", args.steps,
                 "--set", "data.transform.train_crop=resize", *dual, *from_tagger, *common],
                out / f"{name}.log", costs, name)  # fmt: skip
        eval_dir = out / f"{name}-eval"
        run([VLP, "eval", "retrieval", "--model", run_dir, "--data", noisy_dir, "--split", "test", "--dual",
             "--out", eval_dir], out / f"{name}-eval.log", costs, f"{name} eval")  # fmt: skip
        results[name] = json.loads((eval_dir / "results.json").read_text())
        sizes[name] = len(
            json.loads((data / ("capfilt_train.json" if data == capfilt else "captions_train.json")).read_text())
        )
    print()
    print(f"web set: {at_blip['web']} training captions of {args.images} images' world (seed {args.seed + 1}), "
          f"{at_blip['noise']:.1%} replaced by another image's caption; filter and captioner from the clean world "
          f"(seed {args.seed}): tagger {args.tag_steps}, filter {args.filter_steps}, captioner {args.caption_steps} "
          "steps of 32")  # fmt: skip
    print(f"ranking web captions by the filter's p(match): AUC {auc:.3f} for telling the known noise apart "
          "(0.5 = chance)")  # fmt: skip
    print("| filter threshold | web captions dropped | precision | recall | synthetic captions kept |")
    for label, s in ((f"{args.threshold} (BLIP's)", at_blip), (f"{at_rate_threshold:.4f} (drops the noise rate)",
                                                                at_rate)):  # fmt: skip
        print(f"| {label} | {s['dropped']:.1%} | {s['precision']:.3f} | {s['recall']:.3f} | "
              f"{s['kept_synthetic']} / {s['synthetic']} |")  # fmt: skip
    print(f"(dropping at random: precision {at_blip['noise']:.3f})")
    print(
        f"CapFilt set pretrained on (threshold {threshold:.4f}): {used['kept_web']} web + "
        f"{used['kept_synthetic']} synthetic texts (duplicates of an image's kept text counted once in the set)"
    )
    print(f"\nretrieval on the web test split, dual encoder (CLIP's loss) from the tagger, {args.steps} steps of 32, "
          f"seed {args.seed}, by embeddings (--dual)")  # fmt: skip
    print("| pretrained on | texts | i2t R@1/5/10 | t2i R@1/5/10 | RSUM |")
    for name, label in ARMS.items():
        m = results[name]["metrics"]
        i2t = " / ".join(f"{m[f'i2t_r{k}']:.1f}" for k in (1, 5, 10))
        t2i = " / ".join(f"{m[f't2i_r{k}']:.1f}" for k in (1, 5, 10))
        print(f"| {label} | {sizes[name]} | {i2t} | {t2i} | {m['rsum']:.1f} |")
    chance = results["pre-noisy"]["chance"]
    m = results["pre-noisy"]["metrics"]
    print(f"chance RSUM {chance['rsum']:.1f} ({m['n_images']} images, {m['n_texts']} captions)")
    total = sum(c["cpu_s"] for c in costs.values())
    print("\ncost (CPU s / wall s): " + "; ".join(f"{k} {c['cpu_s']:.0f}/{c['wall_s']:.0f}" for k, c in costs.items()))
    print(f"total: {total / 60:.1f} CPU-min in the stages run now, {time.perf_counter() - wall:.0f} s wall")
    (out / "bench.json").write_text(json.dumps({
        "args": vars(args), "costs": costs, "auc": auc, "at_blip": at_blip, "at_rate": at_rate,
        "at_rate_threshold": at_rate_threshold, "threshold_used": threshold, "used": used,
        "retrieval": {k: v["metrics"] for k, v in results.items()},
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
