"""Writers of the real datasets' annotation formats, fed with ShapesWorld image records.

A *record* is one image's ground truth as plain data (made by ``generate``)::

    {"image_id": int, "split": str, "file": "images/train/0000001.png", "width": int, "height": int,
     "objects": [{"id": ann_id, "shape", "color", "size", "bbox": [x, y, w, h], "area", "segmentation"}],
     "captions": [str], "caption_tokens": [[str]],
     "questions": [{"question", "answer", "answer_type", "question_type", "family"}],
     "refs": [(object index, [(sentence, tokens), ...])], "jpeg": bytes | None}

Each ``write_*`` function writes one format under the dataset root (see the package
docstring for the layout) and returns the paths it wrote; ``write_all`` runs them,
in parallel processes when it can. Output depends only on the records, so it is
byte-for-byte reproducible (no timestamps, fixed tar metadata, ordered JSON).
"""

from __future__ import annotations

import io
import json
import multiprocessing as mp
import pickle
import tarfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vlp.data.shapesworld.vocab import COLORS, SHAPES, SIZES

Record = dict[str, Any]
SPLITS: tuple[str, ...] = ("train", "val", "test", "holdout")


def categories() -> list[dict[str, Any]]:
    """COCO categories: one per shape, ids from 1."""
    return [{"id": k + 1, "name": name, "supercategory": "shape"} for k, name in enumerate(SHAPES)]


def dump_json(path: Path, data: Any, indent: int | None = None) -> Path:
    """Compact JSON (like the real files) unless ``indent`` is given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    separators = (",", ":") if indent is None else (",", ": ")
    path.write_text(json.dumps(data, separators=separators, indent=indent), encoding="utf-8")
    return path


def by_split(records: Sequence[Record], split: str) -> list[Record]:
    return [r for r in records if r["split"] == split]


# ---------------------------------------------------------------- captions: Karpathy, ALBEF


def write_karpathy(root: Path, records: Sequence[Record]) -> list[Path]:
    """``annotations/dataset_shapes.json`` in the layout of Karpathy's ``dataset_coco.json``."""
    images, sentid = [], 0
    for imgid, rec in enumerate(records):
        sentences = []
        for caption, tokens in zip(rec["captions"], rec["caption_tokens"]):
            sentences.append({"tokens": tokens, "raw": caption, "imgid": imgid, "sentid": sentid})
            sentid += 1
        folder, filename = rec["file"].rsplit("/", 1)
        images.append(
            {
                "filepath": folder,
                "sentids": [s["sentid"] for s in sentences],
                "filename": filename,
                "imgid": imgid,
                "split": rec["split"],
                "sentences": sentences,
                "cocoid": rec["image_id"],
            }
        )
    return [dump_json(root / "annotations" / "dataset_shapes.json", {"images": images, "dataset": "shapes"})]


def write_albef(root: Path, records: Sequence[Record]) -> list[Path]:
    """``annotations/captions_{split}.json``: ALBEF/BLIP caption lists (train: one entry per caption)."""
    written = []
    for split in SPLITS:
        recs = by_split(records, split)
        if split == "train":
            entries = [
                {"image": r["file"], "caption": c, "image_id": f"shapes_{r['image_id']}"}
                for r in recs
                for c in r["captions"]
            ]
        else:
            entries = [{"image": r["file"], "caption": list(r["captions"])} for r in recs]
        written.append(dump_json(root / "annotations" / f"captions_{split}.json", entries))
    return written


def write_manifests(root: Path, records: Sequence[Record]) -> list[Path]:
    """``manifest_{split}.jsonl``: one ``{"image", "captions", "image_id", "tags"}`` line per image."""
    written = []
    for split in SPLITS:
        lines = [
            json.dumps(
                {
                    "image": r["file"],
                    "captions": list(r["captions"]),
                    "image_id": r["image_id"],
                    "tags": [o["shape"] for o in r["objects"]],
                }
            )
            for r in by_split(records, split)
        ]
        path = root / f"manifest_{split}.jsonl"
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        written.append(path)
    return written


# -------------------------------------------------------------------------- COCO instances


def coco_instances(records: Iterable[Record], file_name: str = "split") -> dict[str, Any]:
    """COCO instances for ``records``.

    ``file_name`` is relative to ``images/{split}`` (``"split"``, the per-split files) or to
    ``images/`` (``"root"``, RefCOCO's all-image file).
    """
    images, annotations = [], []
    for r in records:
        name = r["file"].rsplit("/", 1)[1]
        images.append(
            {
                "id": r["image_id"],
                "file_name": name if file_name == "split" else f"{r['split']}/{name}",
                "width": r["width"],
                "height": r["height"],
            }
        )
        for obj in r["objects"]:
            annotations.append(
                {
                    "id": obj["id"],
                    "image_id": r["image_id"],
                    "category_id": SHAPES.index(obj["shape"]) + 1,
                    "bbox": obj["bbox"],
                    "area": obj["area"],
                    "iscrowd": 0,
                    "segmentation": obj["segmentation"],
                    "attributes": {"color": obj["color"], "size": obj["size"]},
                }
            )
    info = {"description": "ShapesWorld (synthetic)", "version": "1.0", "year": 2024}
    return {"info": info, "licenses": [], "images": images, "annotations": annotations, "categories": categories()}


def write_coco(root: Path, records: Sequence[Record]) -> list[Path]:
    """``annotations/instances_{split}.json``."""
    return [
        dump_json(root / "annotations" / f"instances_{split}.json", coco_instances(by_split(records, split)))
        for split in SPLITS
    ]


# ------------------------------------------------------------------------------ VQAv2

_ANSWER_SPACE = {"shape": list(SHAPES), "color": list(COLORS), "size": list(SIZES)}


def _wrong_answer(rng: np.random.Generator, answer: str, answer_type: str, max_count: int) -> str:
    """A plausible wrong answer of the same kind (for simulated annotator noise)."""
    if answer_type == "yes/no":
        return "no" if answer == "yes" else "yes"
    if answer_type == "number":
        options = [str(k) for k in range(max_count + 1) if str(k) != answer]
    else:
        space = next((v for v in _ANSWER_SPACE.values() if answer in v), [answer])
        options = [a for a in space if a != answer] or [answer]
    return options[int(rng.integers(len(options)))]


def ten_answers(answer: str, answer_type: str, noise: float, rng: np.random.Generator, max_count: int) -> list[str]:
    """Ten annotator answers: the true one, each replaced by a wrong one with probability ``noise``."""
    return [_wrong_answer(rng, answer, answer_type, max_count) if rng.random() < noise else answer for _ in range(10)]


def write_vqa(
    root: Path, records: Sequence[Record], noise: float = 0.0, seed: int = 0, max_count: int = 4
) -> list[Path]:
    """``v2_OpenEnded_shapes_{split}_questions.json`` and ``v2_shapes_{split}_annotations.json``."""
    info = {"description": "ShapesWorld VQA (synthetic, VQAv2 layout)", "version": "1.0", "year": 2024}
    written = []
    for split in SPLITS:
        questions, annotations = [], []
        for r in by_split(records, split):
            for k, qa in enumerate(r["questions"]):
                qid = r["image_id"] * 1000 + k  # VQAv2 numbering: image id then question index
                if noise > 0:  # a per-question RNG: the noise does not depend on the other questions
                    rng = np.random.default_rng([seed, 2, qid])
                    answers = ten_answers(qa["answer"], qa["answer_type"], noise, rng, max_count)
                else:
                    answers = [qa["answer"]] * 10
                # the consensus answer: most frequent, the true one on ties
                best = max(dict.fromkeys([qa["answer"], *answers]), key=answers.count)
                questions.append({"image_id": r["image_id"], "question": qa["question"], "question_id": qid})
                annotations.append(
                    {
                        "question_type": qa["question_type"],
                        "multiple_choice_answer": best,
                        "answers": [
                            {"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)
                        ],
                        "image_id": r["image_id"],
                        "answer_type": qa["answer_type"],
                        "question_id": qid,
                        "question_family": qa["family"],
                    }
                )
        common = {"info": info, "license": {"name": "CC BY 4.0", "url": ""}, "data_type": "shapes"}
        written.append(
            dump_json(
                root / "annotations" / f"v2_OpenEnded_shapes_{split}_questions.json",
                {**common, "task_type": "Open-Ended", "data_subtype": split, "questions": questions},
            )
        )
        written.append(
            dump_json(
                root / "annotations" / f"v2_shapes_{split}_annotations.json",
                {**common, "data_subtype": split, "annotations": annotations},
            )
        )
    return written


# -------------------------------------------------------------------------- RefCOCO


def write_refcoco(root: Path, records: Sequence[Record]) -> list[Path]:
    """``annotations/refs(unc).p`` (pickle protocol 2) and ``annotations/instances.json`` for all images."""
    refs, ref_id, sent_id = [], 0, 0
    for r in records:
        for index, sentences in r["refs"]:
            obj = r["objects"][index]
            sents = []
            for raw, tokens in sentences:
                sents.append({"tokens": tokens, "raw": raw, "sent_id": sent_id, "sent": " ".join(tokens)})
                sent_id += 1
            stem = r["file"].rsplit("/", 1)[1].rsplit(".", 1)[0]
            refs.append(
                {
                    "sent_ids": [s["sent_id"] for s in sents],
                    "file_name": f"{stem}_{ref_id}.png",  # RefCOCO's "<image file stem>_<ref>" convention
                    "ann_id": obj["id"],
                    "ref_id": ref_id,
                    "image_id": r["image_id"],
                    "split": r["split"],
                    "sentences": sents,
                    "category_id": SHAPES.index(obj["shape"]) + 1,
                }
            )
            ref_id += 1
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    refs_path = root / "annotations" / "refs(unc).p"
    # pickle memoises shared objects, so its bytes depend on which strings happen to be the same
    # object (records from worker processes share less); a JSON round trip makes that canonical
    canonical = json.loads(json.dumps(refs))
    with open(refs_path, "wb") as f:
        pickle.dump(canonical, f, protocol=2)
    return [refs_path, dump_json(root / "annotations" / "instances.json", coco_instances(records, file_name="root"))]


# ------------------------------------------------------------------------ WebDataset


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0  # fixed, for reproducible shards
    tar.addfile(info, io.BytesIO(data))


def write_webdataset(root: Path, records: Sequence[Record], shard_size: int = 1000) -> list[Path]:
    """``shards/{split}-{shard:05d}.tar`` in the img2dataset layout: KEY.jpg, KEY.txt, KEY.json.

    KEY is img2dataset's 9 digits: the shard number (5) then the index inside the shard (4).
    """
    if not 1 <= shard_size <= 10_000:
        raise ValueError(f"shard_size={shard_size}: img2dataset keys allow 1..10000 samples per shard")
    (root / "shards").mkdir(parents=True, exist_ok=True)
    written = []
    for split in SPLITS:
        recs = by_split(records, split)
        for shard, start in enumerate(range(0, len(recs), shard_size)):
            path = root / "shards" / f"{split}-{shard:05d}.tar"
            with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
                for offset, r in enumerate(recs[start : start + shard_size]):
                    key = f"{shard:05d}{offset:04d}"
                    caption = r["captions"][0]
                    meta = {
                        "url": "",
                        "key": key,
                        "status": "success",
                        "error_message": None,
                        "width": r["width"],
                        "height": r["height"],
                        "original_width": r["width"],
                        "original_height": r["height"],
                        "caption": caption,
                        "image_id": r["image_id"],
                    }
                    _tar_add(tar, f"{key}.jpg", r["jpeg"])
                    _tar_add(tar, f"{key}.txt", caption.encode("utf-8"))
                    _tar_add(tar, f"{key}.json", json.dumps(meta).encode("utf-8"))
            written.append(path)
    return written


# ------------------------------------------------------------------------------ all of them

_WRITERS = {
    "karpathy": write_karpathy,
    "albef": write_albef,
    "coco": write_coco,
    "vqa": write_vqa,
    "refcoco": write_refcoco,
    "webdataset": write_webdataset,
    "manifest": write_manifests,
}
# the costliest first, so that parallel writers finish at about the same time
_COST_ORDER = ("refcoco", "webdataset", "vqa", "karpathy", "coco", "albef", "manifest")
_SHARED: list[Record] = []  # the records, inherited by forked writer processes (never pickled)


def _run_writer(task: tuple[str, str, dict[str, Any]]) -> tuple[str, list[str], float]:
    name, root, options = task
    tick = time.perf_counter()
    written = _WRITERS[name](Path(root), _SHARED, **options)
    return name, [str(p.relative_to(root)) for p in written], time.perf_counter() - tick


def write_all(
    root: Path,
    records: Sequence[Record],
    formats: Iterable[str],
    options: dict[str, dict[str, Any]],
    workers: int = 1,
) -> tuple[dict[str, list[str]], dict[str, float]]:
    """Write every annotation format in ``formats``; returns (paths per format, seconds per format).

    ``options[name]`` are keyword arguments of that writer. With ``workers`` > 1 and the
    ``fork`` start method, the formats are written by that many processes at once.
    """
    global _SHARED
    wanted = set(formats)
    tasks = [(name, str(root), options.get(name, {})) for name in _COST_ORDER if name in wanted]
    _SHARED = list(records)
    try:
        if workers > 1 and len(tasks) > 1 and "fork" in mp.get_all_start_methods():
            with mp.get_context("fork").Pool(min(workers, len(tasks))) as pool:
                results = pool.map(_run_writer, tasks, chunksize=1)
        else:
            results = [_run_writer(task) for task in tasks]
    finally:
        _SHARED = []
    results.sort(key=lambda r: list(_WRITERS).index(r[0]))
    return {name: paths for name, paths, _ in results}, {f"write_{name}_s": t for name, _, t in results}
