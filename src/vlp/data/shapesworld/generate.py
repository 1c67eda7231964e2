"""``generate``: render a ShapesWorld dataset and write it in every real format.

Image ``i`` (0-based; image id ``i + 1``) draws its scene and its text from RNGs
seeded by ``(seed, i)`` alone, so the output is identical for any number of
worker processes. Splits are contiguous id ranges: train, val, test, holdout.
Workers render, write the PNG and region files and build each image's record;
the parent numbers the COCO annotations in image order, then the annotation
files are written, one format per process where it can (``writers.write_all``).
"""

from __future__ import annotations

import io
import math
import multiprocessing as mp
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vlp.config import ConfigError
from vlp.data.shapesworld import writers
from vlp.data.shapesworld.language import Facts, make_captions, make_refs, tokenize
from vlp.data.shapesworld.questions import make_questions
from vlp.data.shapesworld.regions import FEATURE_DIM, region_arrays, write_npz
from vlp.data.shapesworld.render import render_layers
from vlp.data.shapesworld.scene import Pair, Scene, SceneObject, choose_holdout_pairs, sample_scene
from vlp.data.shapesworld.vocab import GENERATOR_VERSION, SHAPE_AREA, SHAPE_POLYGONS, vocabulary

FORMATS: tuple[str, ...] = ("karpathy", "albef", "coco", "vqa", "refcoco", "webdataset", "regions", "manifest")
SPLITS = writers.SPLITS
# paths generate() writes; the only ones an overwrite removes
_OWNED = ("images", "annotations", "shards", "regions", "meta.json", *(f"manifest_{s}.jsonl" for s in SPLITS))


def split_counts(images: int, splits: Sequence[float], holdout: float) -> dict[str, int]:
    """Images per split: ``holdout`` of all, the rest shared by ``splits`` (largest remainder)."""
    n_hold = int(round(images * holdout))
    rest = images - n_hold
    shares = [rest * f for f in splits]
    counts = [int(math.floor(s)) for s in shares]
    for k in sorted(range(3), key=lambda k: counts[k] - shares[k])[: rest - sum(counts)]:
        counts[k] += 1
    return dict(zip(SPLITS, [*counts, n_hold]))


def split_of(index: int, counts: dict[str, int]) -> str:
    """The split of 0-based image ``index`` (splits are contiguous, in SPLITS order)."""
    for split in SPLITS:
        if index < counts[split]:
            return split
        index -= counts[split]
    raise IndexError("image index beyond the dataset")


def image_rngs(seed: int, index: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent (scene, text) generators of image ``index``; depend on nothing else.

    Streams: ``[seed, 0, index]`` images here, ``[seed, 1]`` the held-out pairs (scene.py),
    ``[seed, 2, question_id]`` the VQA answer noise (writers.py).
    """
    scene_seq, text_seq = np.random.SeedSequence([seed, 0, index]).spawn(2)
    return np.random.default_rng(scene_seq), np.random.default_rng(text_seq)


def _split_scene(
    rng: np.random.Generator, split: str, holdout_pairs: Sequence[Pair], min_objects: int, max_objects: int
) -> Scene:
    if split == "holdout":
        return sample_scene(rng, min_objects, max_objects, require=list(holdout_pairs))
    return sample_scene(rng, min_objects, max_objects, exclude=holdout_pairs)


def make_scene(
    seed: int, index: int, split: str, holdout_pairs: Sequence[Pair], min_objects: int = 1, max_objects: int = 4
) -> Scene:
    """The scene of image ``index``: hold-out images contain a held-out pair, the others none."""
    return _split_scene(image_rngs(seed, index)[0], split, holdout_pairs, min_objects, max_objects)


def scene_of(meta: dict[str, Any], image_id: int) -> Scene:
    """Re-create the exact scene of ``image_id`` from a dataset's ``meta.json`` contents."""
    counts, opts = meta["counts"], meta["options"]
    pairs = [tuple(p) for p in meta["holdout_combinations"]]
    index = image_id - 1
    return make_scene(meta["seed"], index, split_of(index, counts), pairs, opts["min_objects"], opts["max_objects"])


@dataclass(frozen=True)
class _Job:
    root: str
    size: int
    seed: int
    counts: dict[str, int]
    holdout_pairs: tuple[Pair, ...]
    min_objects: int
    max_objects: int
    captions: int
    questions: int
    formats: frozenset[str]


def _object_record(obj: SceneObject, size: int) -> dict[str, Any]:
    # round the corners, then take differences, so that x + w is the rounded right edge
    x0, y0, x1, y1 = (round(v, 2) for v in obj.box(size))
    r = obj.radius * size
    polygon = [
        round(v, 2) for px, py in SHAPE_POLYGONS[obj.shape] for v in (obj.cx * size + r * px, obj.cy * size + r * py)
    ]
    return {
        "shape": obj.shape,
        "color": obj.color,
        "size": obj.size,
        "bbox": [x0, y0, round(x1 - x0, 2), round(y1 - y0, 2)],
        "area": round(SHAPE_AREA[obj.shape] * r * r, 2),
        "segmentation": [polygon],
    }


def _build(job: _Job, index: int) -> dict[str, Any]:
    """Render image ``index``, write its PNG (and region file) and return its record."""
    split = split_of(index, job.counts)
    image_id = index + 1
    scene_rng, text_rng = image_rngs(job.seed, index)
    scene = _split_scene(scene_rng, split, job.holdout_pairs, job.min_objects, job.max_objects)
    rendered = render_layers(scene, job.size)
    rel = f"images/{split}/{image_id:07d}.png"
    pil = Image.fromarray(rendered.image)
    pil.save(Path(job.root) / rel, format="PNG", compress_level=1)  # lossless either way; 1 is fastest
    if "regions" in job.formats:
        write_npz(Path(job.root) / "regions" / f"{image_id:07d}.npz", region_arrays(scene, rendered))
    jpeg = None
    if "webdataset" in job.formats:
        buffer = io.BytesIO()
        pil.save(buffer, format="JPEG", quality=95, subsampling=0)  # 4:4:4 keeps small shapes' colours
        jpeg = buffer.getvalue()
    facts = Facts(scene)
    avoid = () if split == "holdout" else job.holdout_pairs
    captions = make_captions(scene, text_rng, job.captions, facts)
    refs = make_refs(scene, text_rng, facts=facts)
    return {
        "image_id": image_id,
        "split": split,
        "file": rel,
        "width": job.size,
        "height": job.size,
        "objects": [_object_record(o, job.size) for o in scene.objects],
        "captions": captions,
        "caption_tokens": [tokenize(c) for c in captions],  # tokenised here, in parallel, not in the parent
        "questions": [vars(qa) for qa in make_questions(scene, text_rng, job.questions, avoid, facts)],
        "refs": [(index, [(s, tokenize(s)) for s in sentences]) for index, sentences in refs],
        "jpeg": jpeg,
    }


def _build_range(args: tuple[_Job, int, int]) -> list[dict[str, Any]]:
    job, start, stop = args
    return [_build(job, i) for i in range(start, stop)]


def _check(name: str, ok: bool, expected: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"shapesworld {name}={value!r}: expected {expected}")


def _prepare(root: Path, overwrite: bool) -> None:
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise ConfigError(
                f"shapesworld out_dir {str(root)!r} exists and is not empty; "
                "pass overwrite=True (vlp data synth --overwrite)"
            )
        if not (root / "meta.json").exists():
            raise ConfigError(
                f"shapesworld out_dir {str(root)!r} has no meta.json; refusing to clear a folder not ours"
            )
        for name in _OWNED:
            path = root / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()


def default_workers(images: int) -> int:
    """CPUs available to this process, but one for small jobs where process start-up dominates."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 1 if images < 400 else max(1, min(cpus, 8))


def generate(
    out_dir: str | Path,
    images: int = 1000,
    size: int = 64,
    seed: int = 0,
    splits: Sequence[float] = (0.8, 0.1, 0.1),
    holdout: float = 0.1,
    holdout_pairs: float = 0.12,
    min_objects: int = 1,
    max_objects: int = 4,
    captions_per_image: int = 5,
    questions_per_image: int = 5,
    answer_noise: float = 0.0,
    shard_size: int = 1000,
    workers: int | None = None,
    formats: Sequence[str] = FORMATS,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write a ShapesWorld dataset under ``out_dir``; returns counts, timings and paths.

    ``images`` in all, ``size`` x ``size`` pixels. ``holdout``: fraction of images in the
    compositional hold-out split; ``holdout_pairs``: fraction of (shape, colour) pairs held
    out of train/val/test; ``splits``: train/val/test fractions of the remaining images.
    ``answer_noise``: chance that each of a question's ten VQA answers is a wrong one.
    ``formats``: subset of :data:`FORMATS` (PNG images and meta.json are always written).
    """
    start = time.perf_counter()
    _check("images", isinstance(images, int) and images >= 1, "an integer >= 1", images)
    _check("seed", isinstance(seed, int) and seed >= 0, "an integer >= 0", seed)
    _check("size", isinstance(size, int) and 16 <= size <= 1024, "an integer in [16, 1024]", size)
    _check(
        "splits",
        len(splits) == 3 and min(splits) >= 0 and abs(sum(splits) - 1) < 1e-6,
        "3 fractions summing to 1",
        splits,
    )
    _check("holdout", 0.0 <= holdout < 1.0, "a fraction in [0, 1)", holdout)
    _check("holdout_pairs", 0.0 <= holdout_pairs <= 0.5, "a fraction in [0, 0.5]", holdout_pairs)
    _check("holdout_pairs", holdout == 0 or holdout_pairs > 0, "> 0 when holdout > 0", holdout_pairs)
    _check(
        "min_objects", 1 <= min_objects <= max_objects, f"1 <= min_objects <= max_objects={max_objects}", min_objects
    )
    _check("max_objects", max_objects <= 9, "at most 9 (objects must fit without overlap)", max_objects)
    _check("captions_per_image", captions_per_image >= 1, ">= 1", captions_per_image)
    _check("questions_per_image", questions_per_image >= 1, ">= 1", questions_per_image)
    _check("answer_noise", 0.0 <= answer_noise < 0.5, "a probability in [0, 0.5)", answer_noise)
    _check("shard_size", 1 <= shard_size <= 10_000, "1..10000 (img2dataset keys)", shard_size)
    unknown = sorted(set(formats) - set(FORMATS))
    _check("formats", not unknown, f"a subset of {', '.join(FORMATS)} (unknown: {', '.join(unknown)})", list(formats))

    root = Path(out_dir)
    _prepare(root, overwrite)
    counts = split_counts(images, splits, holdout)
    pairs = tuple(choose_holdout_pairs(seed, holdout_pairs))
    for split in SPLITS:
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
    if "regions" in formats:
        (root / "regions").mkdir(parents=True, exist_ok=True)
    job = _Job(
        str(root), size, seed, counts, pairs, min_objects, max_objects, captions_per_image, questions_per_image,
        frozenset(formats),
    )  # fmt: skip

    workers = default_workers(images) if workers is None else max(1, int(workers))
    chunk = max(25, math.ceil(images / (workers * 8)))
    ranges = [(job, a, min(a + chunk, images)) for a in range(0, images, chunk)]
    records: list[dict[str, Any]] = []
    if workers == 1:
        for r in ranges:
            records.extend(_build_range(r))
    else:
        # fork shares the imported modules (no re-import in each worker); spawn elsewhere
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        with mp.get_context(method).Pool(min(workers, len(ranges))) as pool:
            for part in pool.imap(_build_range, ranges):
                records.extend(part)
    rendered_at = time.perf_counter()

    ann_id = 1
    for rec in records:  # COCO annotation ids, shared by every instances file and the refs
        for obj in rec["objects"]:
            obj["id"] = ann_id
            ann_id += 1
    options = {
        "vqa": {"noise": answer_noise, "seed": seed, "max_count": max_objects},
        "webdataset": {"shard_size": shard_size},
    }
    paths, timings = writers.write_all(root, records, formats, options, workers)
    if "regions" in formats:
        paths["regions"] = ["regions"]
    paths["images"] = [f"images/{s}" for s in SPLITS]

    meta = {
        "name": "shapesworld",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "image_size": size,
        "images": images,
        "counts": counts,
        "first_image_id": {s: 1 + sum(counts[t] for t in SPLITS[: SPLITS.index(s)]) for s in SPLITS},
        "holdout_combinations": [list(p) for p in pairs],
        "categories": writers.categories(),
        "region_feature_dim": FEATURE_DIM,
        "formats": [f for f in FORMATS if f in formats],
        "options": {
            "splits": list(splits),
            "holdout": holdout,
            "holdout_pairs": holdout_pairs,
            "min_objects": min_objects,
            "max_objects": max_objects,
            "captions_per_image": captions_per_image,
            "questions_per_image": questions_per_image,
            "answer_noise": answer_noise,
            "shard_size": shard_size,
        },
        **vocabulary(),
    }
    writers.dump_json(root / "meta.json", meta, indent=2)
    done = time.perf_counter()
    return {
        "out_dir": str(root),
        "counts": counts,
        "holdout_combinations": [list(p) for p in pairs],
        "workers": workers,
        "paths": paths,
        "timings": {"render_s": rendered_at - start, "write_s": done - rendered_at, "total_s": done - start, **timings},
        "images_per_s": images / max(done - start, 1e-9),
    }
