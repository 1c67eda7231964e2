"""Image search: exact vs IVF-PQ latency, recall of the quantized index for TEXT queries against an IMAGE
index of real model embeddings, the cost of returning 10k results, and embedding images/s vs a plain loop.

1. Latency (p50 / p95 per single query, one thread) of exact inner-product search (``faiss.IndexFlatIP``)
   and IVF-PQ (``IndexIVFPQ``, nlist ~ 4 sqrt(N), 8-bit codes, ``--nprobe``) on random unit vectors of
   ``--dim`` (512 = CLIP ViT-B/32) at ``--sizes`` (100k and 1M by default); each query is a noisy copy
   of a stored vector (noise of norm 0.5), and found@10 is how often that vector is in the top 10.
   Anchor: clip-retrieval answers a kNN query in under 10 ms.
2. Recall@10 of IVF-PQ (plain, and with the exact vectors re-ranking its top ``--refine`` x 10) against
   exact search, with TEXT queries (captions) against an index of IMAGE embeddings of the same dual
   encoder, and with image queries for comparison. A dual encoder's image and text embeddings sit in
   separate cones, so an index trained on images can serve text queries worse (clip-retrieval issue 76).
   The model: ``--model`` (any vlp dual-encoder folder or run) on ``--data`` (a ShapesWorld folder); by
   default clip-tiny pretrained here with ITC for ``--train-steps`` on ``--images`` ShapesWorld renders.
   Its embedding is 16-d; PQ with d/4, d/2 (``vlp index build``'s default) and d sub-quantizers, each
   alone and with the top 4 x 10 and 10 x 10 candidates re-scored exactly (``vlp index build``: 10).
3. Returning 10k results: ``vlp serve``'s gallery (search, then the metadata of each result: name under
   its root, caption) for k = 10 and k = 10 000, per query.
4. Index build images/s: ``vlp index build`` (list inputs, decode, preprocess, batches, .npy shards, exact
   index; model loading included) vs a plain loop that loads the same model, opens each image with PIL
   (open + convert), calls the model on batches of the same size and np.saves the vectors and their names:
   medians of ``--rounds`` interleaved rounds, by wall time and by CPU time (the one to trust on a busy
   machine). ``--skip latency recall results --images 2000 --train-steps 50`` runs this part alone in ~1 min.

Run: ``python benchmarks/bench_search.py`` (about 3 minutes on 2 cores; ``--sizes 100000`` skips 1M).
Needs faiss-cpu (``pip install 'vlp[faiss]'``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vlp.cli import main as vlp_main
from vlp.io.embeddings import read_embeddings
from vlp.serve.gallery import Gallery
from vlp.tasks.common import load_model, model_data_config, preprocess_images
from vlp.tasks.zeroshot.head import encode_texts


def quiet(argv: list[str]) -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = vlp_main(argv)
    if code:
        raise SystemExit(f"vlp {' '.join(argv)} failed ({code}):\n{out.getvalue()[-2000:]}")


def ivfpq(faiss, vectors: np.ndarray, nprobe: int, m: int | None = None, refine: int = 0):
    """IVF-PQ over ``vectors`` (nlist ~ 4 sqrt(N), at most N / 39 so k-means has its 39 points per centroid),
    and the same index wrapped with exact re-ranking of its top ``refine`` x k (or None)."""
    n, d = vectors.shape
    nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))
    m = m or max(1, d // 8)
    nbits = max(4, min(8, int(math.log2(max(n // 39, 16)))))  # the codebooks need 39 x 2^nbits points
    index = faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
    outer = faiss.IndexRefineFlat(index) if refine else index
    sample = vectors[np.random.default_rng(0).choice(n, min(n, max(100_000, 40 * nlist)), replace=False)]
    outer.train(sample)
    outer.add(vectors)
    index.nprobe = nprobe
    if refine:
        outer.k_factor = refine
    return index, (outer if refine else None), f"IVF{nlist},PQ{m}x{nbits} np{nprobe}"


def latencies(index, queries: np.ndarray, k: int) -> tuple[float, float]:
    times = []
    for q in queries:
        t0 = time.perf_counter()
        index.search(q[None], k)
        times.append(time.perf_counter() - t0)
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 95) * 1e3)


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found.tolist(), truth.tolist())]))


def part_latency(faiss, args) -> None:
    print(f"\n1. latency per query, random unit vectors, dim {args.dim}, k=10, {torch.get_num_threads()} thread(s)")
    print(f"{'N':>9} {'index':<22} {'build s':>8} {'p50 ms':>8} {'p95 ms':>8} {'found@10':>9}")
    rng = np.random.default_rng(0)
    for n in args.sizes:
        base = rng.standard_normal((n, args.dim), dtype=np.float32)
        base /= np.linalg.norm(base, axis=1, keepdims=True)
        planted = rng.choice(n, args.queries, replace=False)  # each query is a noisy copy of one stored vector
        queries = base[planted] + (0.5 / math.sqrt(args.dim)) * rng.standard_normal(
            (args.queries, args.dim), dtype=np.float32
        )
        t0 = time.perf_counter()
        flat = faiss.IndexFlatIP(args.dim)
        flat.add(base)
        built = time.perf_counter() - t0
        p50, p95 = latencies(flat, queries, 10)
        found = float(np.mean([p in row for p, row in zip(planted, flat.search(queries, 10)[1].tolist())]))
        print(f"{n:>9} {'exact (FlatIP)':<22} {built:>8.1f} {p50:>8.2f} {p95:>8.2f} {found:>9.3f}")
        t0 = time.perf_counter()
        index, refined, name = ivfpq(faiss, base, args.nprobe, refine=args.refine)
        built = time.perf_counter() - t0
        for label, searched in ((name, index), (f"  + re-rank top {10 * args.refine}", refined)):
            p50_q, p95_q = latencies(searched, queries, 10)
            rec = float(np.mean([p in row for p, row in zip(planted, searched.search(queries, 10)[1].tolist())]))
            print(f"{n:>9} {label:<22} {built:>8.1f} {p50_q:>8.2f} {p95_q:>8.2f} {rec:>9.3f}   exact/this p50: "
                  f"{p50 / p50_q:.1f}x")  # fmt: skip
        del base, flat, index, refined


def model_and_data(args, work: Path) -> tuple[Path, Path, str]:
    if args.model and args.data:
        return Path(args.model), Path(args.data), f"{args.model} (given)"
    data, run = work / "shapes", work / "clip"
    t0 = time.perf_counter()
    quiet(["data", "synth", "--out", str(data), "--images", str(args.images), "--size", "32", "--seed", "0"])
    quiet(["tokenizer", "train", "--input", str(data / "annotations" / "dataset_shapes.json"), "--out",
           str(data / "tokenizer"), "--vocab-size", "1000"])  # fmt: skip
    quiet(["pretrain", "clip-tiny", "--out", str(run), "--set", f"data.root={data}", "--set",
           f"model.tokenizer={data / 'tokenizer'}", "--set", f"train.steps={args.train_steps}", "--set",
           "train.progress=false", "--set", "train.tensorboard=false"])  # fmt: skip
    took = time.perf_counter() - t0
    return run, data, f"clip-tiny pretrained here: {args.train_steps} ITC steps on {args.images} renders ({took:.0f} s)"


def shapes_items(data: Path) -> tuple[list[Path], list[str], list[int]]:
    """Every ShapesWorld image of the manifests, and every caption with the row of its image."""
    paths, captions, owner = [], [], []
    for manifest in sorted(data.glob("manifest_*.jsonl")):
        for line in manifest.read_text().splitlines():
            row = json.loads(line)
            owner += [len(paths)] * len(row["captions"])
            captions += row["captions"]
            paths.append(data / row["image"])
    return paths, captions, owner


def part_recall(faiss, args, work: Path) -> tuple[Path, Path]:
    model_dir, data, said = model_and_data(args, work)
    print(f"\n2. recall@10 of IVF-PQ against exact, real embeddings: {said}")
    loaded = load_model(model_dir)
    paths, captions, _ = shapes_items(data)
    out = work / "embeddings"
    quiet(["predict", "embed", str(model_dir), *map(str, paths), "--out", str(out), "--no-progress"])
    images, keys = read_embeddings(out)
    rng = np.random.default_rng(1)
    pick = rng.choice(len(captions), min(args.queries, len(captions)), replace=False)
    with torch.no_grad():
        max_len = model_data_config(loaded.model).max_text_len
        texts = encode_texts(loaded.model, loaded.tokenizer, [captions[i] for i in pick], max_len).numpy()
    image_queries = images[rng.choice(len(images), min(args.queries, len(images)), replace=False)]
    centre = images.mean(0) / np.linalg.norm(images.mean(0))
    cones = f"images {float(np.mean(images @ centre)):.2f}, captions {float(np.mean(texts @ centre)):.2f}"
    print(f"{len(images)} image embeddings (dim {images.shape[1]}), {len(texts)} caption queries; mean cosine to the "
          f"images' mean direction: {cones}")  # fmt: skip
    flat = faiss.IndexFlatIP(images.shape[1])
    flat.add(images)
    truths = {name: flat.search(q, 10)[1] for name, q in (("text", texts), ("image", image_queries))}
    d = images.shape[1]
    print("recall@10 as ids / within 1e-3 of the 10th exact score (ann-benchmarks), re-ranking the top r x 10")
    print(f"{'PQ sub-quantizers':<28} {'nprobe':>6} " + " ".join(f"{'text r' + str(r):>12}" for r in args.refines)
          + " " + " ".join(f"{'image r' + str(r):>12}" for r in args.refines))  # fmt: skip
    for m in sorted({max(1, d // 4), max(1, d // 2), d}):  # d / 4: vlp index build's default
        index, _, name = ivfpq(faiss, images, args.nprobe, m=m)
        cells = []
        for kind, queries in (("text", texts), ("image", image_queries)):
            for r in args.refines:  # r = 0: the quantized scores; else exact re-scoring of the top r x 10
                _, found = index.search(queries, 10 * max(r, 1))
                if r:
                    found = np.stack([row[np.argsort(-(images[row.clip(0)] @ q), kind="stable")[:10]]
                                      for row, q in zip(found, queries)])  # fmt: skip
                found = found[:, :10]
                # ann-benchmarks' recall: a result counts when its exact score is within 1e-3 of the 10th best,
                # so near-ties (many ShapesWorld images embed almost alike) are not counted as misses
                exact = np.einsum("qkd,qd->qk", images[found.clip(0)], queries)
                kth = np.einsum("qkd,qd->qk", images[truths[kind]], queries)[:, -1:]
                eps = float(np.mean((exact >= kth - 1e-3) & (found >= 0)))
                cells.append(f"{recall_at(found, truths[kind]):>6.3f}/{eps:.3f}")
        print(f"{name + (' (default)' if m == max(1, d // 4) else ''):<28} {index.nprobe:>6} {' '.join(cells)}")
    return out, model_dir


def part_many_results(embeddings: Path, args) -> None:
    vectors, keys = read_embeddings(embeddings)
    gallery = Gallery(
        vectors, [str(Path(k).resolve()) for k in keys], captions=[f"caption {i}" for i in range(len(keys))]
    )
    query = vectors[:1]
    print(f"\n3. search + metadata of every result, gallery of {len(gallery)} images (exact search)")
    for k in (10, 10_000):
        for label in ("first", "again"):  # the root check of each file is cached after its first answer
            t0 = time.perf_counter()
            results = gallery.results(*[a[0] for a in gallery.search(query, k)])
            ms = (time.perf_counter() - t0) * 1e3
            print(
                f"k={k:<6} {label:<6} {len(results):>6} results in {ms:8.1f} ms ({1e3 * ms / len(results):.1f} us each)"
            )


def _timed(run) -> tuple[float, float]:
    """``(wall s, CPU s)`` of ``run()``; CPU time (this process, every thread) hardly moves under other load."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def part_embed_rate(model_dir: Path, args, work: Path) -> None:
    paths = shapes_items(Path(args.data) if args.data else work / "shapes")[0][: args.embed_images]
    config = model_data_config(load_model(model_dir).model)
    print(
        f"\n4. embedding {len(paths)} images, batch {args.batch_size}, same model, {torch.get_num_threads()} thread(s)"
    )
    builds = [0]

    def vlp_build() -> None:
        builds[0] += 1  # a fresh folder each time: a rerun into the same one would resume, embedding nothing
        quiet(["index", "build", str(model_dir), *map(str, paths), "--out", str(work / f"rate{builds[0]}"),
               "--batch-size", str(args.batch_size), "--no-progress"])  # fmt: skip

    def plain_loop() -> None:
        # what a user writes: load the model, PIL open + convert, the same preprocessing and encode, np.save
        loaded = load_model(model_dir)  # loading counts on both sides
        vectors = []
        with torch.no_grad():
            for start in range(0, len(paths), args.batch_size):
                batch = [Image.open(p).convert("RGB") for p in paths[start : start + args.batch_size]]
                vectors.append(loaded.model.encode_image(preprocess_images(batch, config)).numpy())
        np.save(work / "plain.npy", np.concatenate(vectors))
        (work / "plain_keys.txt").write_text("".join(f"{p}\n" for p in paths))

    sides = {"vlp index build": vlp_build, "plain loop": plain_loop}
    for run in sides.values():  # warm-up: imports, caches
        run()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
    names = list(sides)
    for round_ in range(args.rounds):  # interleaved, the order turning, so a burst of load favours neither
        for name in names[round_ % 2 :] + names[: round_ % 2]:
            times[name].append(_timed(sides[name]))
    med = {name: (statistics.median(w for w, _ in t), statistics.median(c for _, c in t)) for name, t in times.items()}
    for name, (wall, cpu) in med.items():
        print(f"{name:<18} {len(paths) / wall:8.0f} images/s, {1e6 * cpu / len(paths):6.1f} CPU us per image "
              f"(medians of {args.rounds} interleaved rounds)")  # fmt: skip
    (vw, vc), (pw, pc) = med["vlp index build"], med["plain loop"]
    print(f"ratio vlp / plain (images/s): {pw / vw:.2f} wall, {pc / vc:.2f} by CPU time")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--nprobe", type=int, default=32)
    ap.add_argument("--refine", type=int, default=10, help="IVF-PQ + re-rank: exact scores of the top refine x k")
    ap.add_argument("--refines", type=int, nargs="+", default=[0, 4, 10], help="re-rank factors of part 2")
    ap.add_argument("--model", help="a vlp dual-encoder folder or run (default: train clip-tiny here)")
    ap.add_argument("--data", help="the ShapesWorld folder the model embeds (with --model)")
    ap.add_argument("--images", type=int, default=6000, help="ShapesWorld renders to make when training here")
    ap.add_argument("--train-steps", type=int, default=1000)
    ap.add_argument("--embed-images", type=int, default=2000, help="images for the images/s comparison")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds of part 4")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip", nargs="*", default=[], choices=["latency", "recall", "results", "embed"])
    args = ap.parse_args()
    try:
        import faiss
    except ImportError as err:
        raise SystemExit("bench_search needs faiss-cpu: pip install 'vlp[faiss]'") from err
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    if "latency" not in args.skip:
        part_latency(faiss, args)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if {"recall", "results"} - set(args.skip):
            embeddings, model_dir = part_recall(faiss, args, work)
            if "results" not in args.skip:
                part_many_results(embeddings, args)
        elif "embed" not in args.skip:
            model_dir, _, said = model_and_data(args, work)
            print(f"\nmodel: {said}")
        if "embed" not in args.skip:
            part_embed_rate(model_dir, args, work)


if __name__ == "__main__":
    main()
