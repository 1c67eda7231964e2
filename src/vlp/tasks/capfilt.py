"""BLIP's CapFilt (Li et al. 2022, sec. 3.3): bootstrap a noisy web caption set with a captioner and a filter.

For every web image the captioner (an image-grounded decoder fine-tuned for captioning) writes
``samples_per_image`` synthetic captions by nucleus sampling (``top_p`` 0.9 in BLIP); the filter (an
image-grounded text encoder with an ITM head fine-tuned on clean pairs) scores the web captions and the
synthetic ones, and a text is kept when its ITM probability of "match", ``softmax(itm logits)[1]``, is above
``threshold`` (BLIP keeps what the ITM head calls a match: 0.5). The bootstrapped set is the union of the
kept texts of each image (a synthetic text equal to a kept one is kept once).

The work is streamed in batches of images and logged batch by batch (``OUT/.capfilt/progress.jsonl``,
:class:`vlp.io.predictions.PredictionLog`): a stopped run continues at the first batch not logged,
and since batch ``b``'s sampling is seeded from ``(seed, b, sample)`` alone, the resumed set equals an
uninterrupted one. The log holds every text's ``p_match``, so the output settings (``threshold``,
``format``, ``shard_size``) may change on ``--resume``: a finished run is then only written again.
The final set is written atomically once every batch is done: an ALBEF/BLIP
caption list (``OUT/capfilt_{split}.json``, one entry per kept text) or WebDataset shards
(``OUT/shards/capfilt_{split}-NNNNNN.tar``, one sample per kept text), both read back by vlp's
loaders (:mod:`vlp.data.detect` recognises the folder), plus ``OUT/decisions_{split}.json`` with
every text's source, ITM probability and decision.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import shutil
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from vlp.config import ConfigError, from_dict
from vlp.core.outputs import VisualTokens
from vlp.data.config import DataConfig
from vlp.data.detect import DATA_KINDS, detect_data
from vlp.data.image_io import ImageError, decode_image
from vlp.data.registry import resolve_context, shapes_delegate
from vlp.data.skipping import Skipped
from vlp.data.sources.webdataset import ShardReader, expand_shards, scan_shard
from vlp.io.atomic import write_atomic
from vlp.io.predictions import PredictionLog
from vlp.tasks.captioning.decode import captions_of
from vlp.tasks.common import image_batch, model_data_config
from vlp.tasks.decoding import DecodeOptions

FORMATS = ("albef-json", "wds")
PROGRESS_DIR = ".capfilt"
OUTPUT_SETTINGS = ("threshold", "format", "shard_size")  # applied at the final write: may change on resume


@dataclass
class CapFiltOptions:
    """How CapFilt runs; everything here is recorded with the progress, so a resume must match it."""

    threshold: float = 0.5  # keep a text when p(match) > threshold
    top_p: float = 0.9  # BLIP's nucleus for synthetic captions
    samples_per_image: int = 1
    max_new_tokens: int = 20
    min_new_tokens: int = 0
    prompt: str = "a picture of "  # must be the captioner's fine-tuning prompt
    batch_size: int = 16  # images per batch (and per logged progress line)
    seed: int = 0
    split: str = "train"
    format: str = "albef-json"
    shard_size: int = 1000  # samples per output shard (wds)

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold < 1.0:
            raise ConfigError(f"--threshold: expected a probability in [0, 1), got {self.threshold}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"--top-p: expected a value in (0, 1], got {self.top_p}")
        for name in ("samples_per_image", "batch_size", "shard_size", "max_new_tokens"):
            value = getattr(self, name)
            minimum = 0 if name == "samples_per_image" else 1
            if value < minimum:
                raise ConfigError(f"--{name.replace('_', '-')}: expected >= {minimum}, got {value}")
        if self.format not in FORMATS:
            raise ConfigError(f"--format: {self.format!r} is not one of {', '.join(FORMATS)}")


@dataclass(frozen=True)
class WebImage:
    """One web image and its captions: a file (``path``) or a WebDataset member (``shard``, ``member``)."""

    key: str
    image_id: Any
    captions: tuple[str, ...]
    path: str | None = None
    shard: str | None = None
    member: tuple[int, int] | None = None  # (offset, size) of the image bytes inside ``shard``
    ext: str = "png"


@dataclass
class CapFiltStats:
    """Counts so far: images done / skipped, texts seen and kept by source."""

    images: int = 0
    total: int = 0
    skipped: int = 0
    seen: dict[str, int] = field(default_factory=lambda: {"web": 0, "synthetic": 0})
    kept: dict[str, int] = field(default_factory=lambda: {"web": 0, "synthetic": 0})

    def line(self) -> str:
        parts = [f"{self.images + self.skipped}/{self.total} images"]
        parts += [f"{src} kept {self.kept[src]}/{self.seen[src]}" for src in ("web", "synthetic")]
        if self.skipped:
            parts.append(f"{self.skipped} unreadable")
        return "capfilt: " + ", ".join(parts)


# ----------------------------------------------------------------------------- reading the web set


def _data_config(data: str | Path | DataConfig) -> DataConfig:
    if isinstance(data, DataConfig):
        config = data
    else:
        found = detect_data(Path(data), DATA_KINDS["captions"])
        config = from_dict(DataConfig, found.data_section(), "data")
    if config.type == "shapesworld":
        config = shapes_delegate(dataclasses.replace(config, options={**config.options, "format": "captions"}))
    if config.type not in DATA_KINDS["captions"]:
        raise ConfigError(f"--data: a {config.type} folder holds no caption set; expected {DATA_KINDS['captions']}")
    return config


def _shard_images(config: DataConfig, split: str) -> list[WebImage]:
    _, ctx = resolve_context(config, split, train=False)
    reader = ShardReader()
    out = []
    try:
        for shard in expand_shards(ctx.raw_paths["shards"], ctx.root):
            for sample in scan_shard(shard):
                if isinstance(sample, Skipped):
                    continue  # a truncated shard's tail: the samples before it are read
                meta: dict[str, Any] = {}
                if "json" in sample.members:
                    try:
                        meta = json.loads(reader.read(sample.shard, *sample.members["json"]).decode("utf-8"))
                    except (UnicodeDecodeError, json.JSONDecodeError) as err:
                        raise ConfigError(f"{sample.shard}:{sample.key}.json: not a JSON object ({err})") from err
                caption = meta.get("caption")
                if "txt" in sample.members:
                    caption = reader.read(sample.shard, *sample.members["txt"]).decode("utf-8", errors="replace")
                captions = caption if isinstance(caption, list) else [caption]
                ext = sample.image_ext() or "png"
                out.append(WebImage(
                    f"{sample.shard}:{sample.key}", meta.get("image_id", sample.key),
                    tuple(c.strip() for c in captions if isinstance(c, str) and c.strip()),
                    shard=sample.shard, member=sample.members[ext], ext=ext,
                ))  # fmt: skip
    finally:
        reader.close()
    return out


def read_web_images(data: str | Path | DataConfig, split: str = "train") -> list[WebImage]:
    """The images of ``split`` with all their captions, in the loader's order.

    ``data``: a dataset folder of captions (ALBEF/BLIP JSON, Karpathy, manifest, WebDataset shards or a
    ShapesWorld folder; recognised by :func:`vlp.data.detect.detect_data`) or a ``DataConfig``.
    """
    config = _data_config(data)
    if config.type == "webdataset":
        images = _shard_images(config, split)
    else:
        spec, ctx = resolve_context(config, split, train=False)
        ctx.options.mode = "images"  # one record per image with every caption
        index = spec.index(ctx)
        images = [
            WebImage(str(r["image"]), r.get("image_id"), tuple(r["captions"]), path=str(r["image"]),
                     ext=Path(str(r["image"])).suffix.lstrip(".").lower() or "png")
            for r in index.records
        ]  # fmt: skip
    if not images:
        raise ConfigError(f"--data: {config.root}: split {split!r} holds no image with a caption")
    return images


def image_bytes(item: WebImage, reader: ShardReader) -> bytes:
    """The encoded image of ``item`` as stored (a file's bytes, or the shard member's)."""
    if item.shard is not None and item.member is not None:
        return reader.read(item.shard, *item.member)
    return Path(str(item.path)).read_bytes()


# ----------------------------------------------------------------------------- the captioner and the filter


def batch_seed(seed: int, batch: int, sample: int) -> int:
    """The sampling seed of one batch's ``sample``-th caption round: depends on nothing else (resume-safe)."""
    digest = hashlib.sha256(f"capfilt:{seed}:{batch}:{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def synthetic_captions(
    model: Any, tokenizer: Any, images: list[Image.Image], options: CapFiltOptions, batch: int, device: Any = "cpu"
) -> list[list[str]]:
    """``samples_per_image`` nucleus-sampled captions per image (``[image][sample]``), seeded per batch."""
    if getattr(model, "decoder", None) is None:
        raise ConfigError(f"--captioner: model {model.cfg.name!r} has no text decoder (model.decoder) to caption with")
    pixels = image_batch(model, images).to(device)
    out: list[list[str]] = [[] for _ in images]
    with torch.no_grad():  # captions_of runs the image tower outside no_grad
        for s in range(options.samples_per_image):
            seed = batch_seed(options.seed, batch, s)
            decode = DecodeOptions(strategy="nucleus", top_p=options.top_p, max_new_tokens=options.max_new_tokens,
                                   min_new_tokens=options.min_new_tokens, seed=seed)  # fmt: skip
            for row, text in enumerate(captions_of(model, tokenizer, pixels, options.prompt, decode)):
                out[row].append(text)
    return out


def match_probabilities(
    model: Any, tokenizer: Any, images: list[Image.Image], pairs: list[tuple[int, str]], device: Any = "cpu"
) -> torch.Tensor:
    """``p(match)`` ``(P,)`` of each ``(image row, text)`` pair: the softmax of the fusion encoder's ITM head."""
    heads = getattr(model, "heads", {})
    if "itm" not in heads or not getattr(model, "has_fusion", False):
        raise ConfigError(
            f"--filter: model {model.cfg.name!r} has no fusion encoder with an ITM head (model.heads.itm)"
        )
    if getattr(model.cfg, "use_tags", False):
        raise ConfigError("--filter: a model reading OSCAR object tags cannot filter captions of plain images")
    if not pairs:
        return torch.zeros(0)
    max_len = model_data_config(model).max_text_len
    with torch.no_grad():
        image = model.image_tokens(image_batch(model, images).to(device))
        tok = tokenizer([text for _, text in pairs], max_length=max_len)
        ids, mask = tok.input_ids.to(device), tok.attention_mask.bool().to(device)
        types = tok.token_type_ids.to(device) if tok.token_type_ids is not None else None
        rows = torch.tensor([row for row, _ in pairs], device=device)
        text = model.text_tokens(ids, mask, types)
        fused = model.fuse(text, mask, VisualTokens(image.tokens[rows], image.mask[rows]))
        return heads["itm"](fused.pooled).float().softmax(dim=-1)[:, 1].cpu()


def filter_batch(
    captioner: Any,
    captioner_tokenizer: Any,
    filt: Any,
    filter_tokenizer: Any,
    items: list[WebImage],
    options: CapFiltOptions,
    batch: int,
    reader: ShardReader,
    device: Any = "cpu",
) -> list[dict[str, Any]]:
    """One batch of web images -> one record per image: its texts with source, ``p_match`` and ``kept``."""
    records: list[dict[str, Any]] = []
    good: list[tuple[WebImage, Image.Image]] = []
    for item in items:
        try:
            good.append((item, decode_image(image_bytes(item, reader), None)[0]))
        except (ImageError, OSError, EOFError) as err:
            records.append({"key": item.key, "error": str(err)})
    if not good:
        return records
    pil = [image for _, image in good]
    synthetic = synthetic_captions(captioner, captioner_tokenizer, pil, options, batch, device)
    pairs: list[tuple[int, str]] = []
    sources: list[str] = []
    for row, (item, _) in enumerate(good):
        texts = [(t, "web") for t in item.captions] + [(t, "synthetic") for t in synthetic[row] if t.strip()]
        pairs += [(row, text) for text, _ in texts]
        sources += [source for _, source in texts]
    probs = match_probabilities(filt, filter_tokenizer, pil, pairs, device).tolist()
    by_row: list[list[dict[str, Any]]] = [[] for _ in good]
    for (row, text), source, p in zip(pairs, sources, probs):
        by_row[row].append({"text": text, "source": source, "p_match": p, "kept": p > options.threshold})
    for (item, _), texts in zip(good, by_row):
        records.append({"key": item.key, "image_id": item.image_id, "texts": texts})
    order = {item.key: i for i, item in enumerate(items)}
    return sorted(records, key=lambda r: order[r["key"]])


# ----------------------------------------------------------------------------- the run


def _batches(items: list[WebImage], size: int) -> Iterator[tuple[int, list[WebImage]]]:
    for b, start in enumerate(range(0, len(items), size)):
        yield b, items[start : start + size]


def prepare_out(out: Path, resume: bool, force: bool) -> None:
    """Refuse to touch an existing output unless ``resume`` (continue it) or ``force`` (start over)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file; CapFilt writes a folder")
    if out.is_dir() and any(out.iterdir()):
        if force:
            shutil.rmtree(out / PROGRESS_DIR, ignore_errors=True)
        elif not resume:
            raise ConfigError(
                f"--out {out}: exists and is not empty; pass --resume to continue it or --force to redo it"
            )
        elif not (out / PROGRESS_DIR / "progress.jsonl").is_file():
            raise ConfigError(f"--out {out}: holds no CapFilt progress ({PROGRESS_DIR}/progress.jsonl) to resume")
    out.mkdir(parents=True, exist_ok=True)


def kept_texts(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The kept texts of one image record, each text once (the first time it appears)."""
    seen: set[str] = set()
    kept = []
    for text in record.get("texts", []):
        if text["kept"] and text["text"] not in seen:
            seen.add(text["text"])
            kept.append(text)
    return kept


def _write_albef(out: Path, split: str, records: list[dict[str, Any]], items: dict[str, WebImage]) -> list[Path]:
    entries = []
    for r in records:
        kept = kept_texts(r)
        if kept:  # the path resolved once per image that keeps a text, not once per kept text
            image = str(Path(str(items[r["key"]].path)).resolve())
            entries += [{"image": image, "caption": t["text"], "image_id": r["image_id"]} for t in kept]
    written = [write_atomic(out / f"capfilt_{split}.json", json.dumps(entries, ensure_ascii=False, indent=0))]
    for old in (out / "shards").glob(f"capfilt_{split}-*.tar"):  # a --format wds run's set: one reading only
        old.unlink()
    return written


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 0  # mtime 0: the same set gives the same bytes
    tar.addfile(info, io.BytesIO(data))


def _write_shards(out: Path, split: str, records: list[dict[str, Any]], items: dict[str, WebImage],
                  shard_size: int, reader: ShardReader) -> list[Path]:  # fmt: skip
    samples = [(r, t) for r in records for t in kept_texts(r)]
    folder = out / "shards"
    written = []
    for n, start in enumerate(range(0, max(len(samples), 1), shard_size)):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for i, (record, text) in enumerate(samples[start : start + shard_size], start=start):
                item = items[record["key"]]
                key = f"{i:09d}"
                _tar_add(tar, f"{key}.{item.ext}", image_bytes(item, reader))
                _tar_add(tar, f"{key}.txt", text["text"].encode("utf-8"))
                meta = {"caption": text["text"], "image_id": record["image_id"], "source": text["source"],
                        "p_match": text["p_match"], "web_key": record["key"]}  # fmt: skip
                _tar_add(tar, f"{key}.json", json.dumps(meta, ensure_ascii=False).encode("utf-8"))
        written.append(write_atomic(folder / f"capfilt_{split}-{n:06d}.tar", buffer.getvalue()))
    # a previous run's other shards (--force, --resume with another shard size) go once the new set is written
    for old in set(folder.glob(f"capfilt_{split}-*.tar")) - set(written):
        old.unlink()
    (out / f"capfilt_{split}.json").unlink(missing_ok=True)  # a --format albef-json run's list: one reading only
    return written


def run_capfilt(
    captioner: Any,
    filt: Any,
    data: str | Path | DataConfig,
    out: str | Path,
    options: CapFiltOptions,
    *,
    names: tuple[str, str] = ("captioner", "filter"),
    resume: bool = False,
    force: bool = False,
    device: Any = "cpu",
    progress: Callable[[CapFiltStats], None] | None = None,
) -> tuple[CapFiltStats, list[Path]]:
    """Run CapFilt over ``data``'s ``options.split`` and write the bootstrapped set into the folder ``out``.

    ``captioner`` / ``filt``: :class:`vlp.io.folders.LoadedModel` s (model + tokenizer); ``names`` (e.g.
    their paths) are recorded with the progress so that a resume with other models is refused.
    ``progress`` is called after every batch. Returns the counts and the files written.
    """
    out = Path(out)
    items = read_web_images(data, options.split)
    if options.format == "albef-json" and any(item.path is None for item in items):
        raise ConfigError("--format albef-json: the web set is WebDataset shards (no image files); use --format wds")
    prepare_out(out, resume, force)
    root = data.root if isinstance(data, DataConfig) else data
    digest = hashlib.sha256(json.dumps([(i.key, i.captions) for i in items]).encode()).hexdigest()
    # the web set the work reads: a --resume with another --data folder, or other images, is refused
    settings = {**asdict(options), "filter": names[1], "images": len(items), "data": str(Path(root).resolve()),
                "items": digest}  # fmt: skip
    # what the logged work depends on; the output settings are applied when the set is written
    work = {k: v for k, v in settings.items() if k not in OUTPUT_SETTINGS}
    progress_path = out / PROGRESS_DIR / "progress.jsonl"
    log = PredictionLog(progress_path, names[0], work, overwrite=force, overwrite_flag="--force")
    stats = CapFiltStats(total=len(items))
    if log.resumed:
        _count(stats, apply_threshold(read_progress(log.out), options.threshold))
    reader = ShardReader()
    models = (captioner.model, filt.model)
    was_training = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        for b, chunk in _batches(items, options.batch_size):
            if f"batch-{b:06d}" in log.done:
                continue
            records = filter_batch(captioner.model, captioner.tokenizer, filt.model, filt.tokenizer, chunk, options,
                                   b, reader, device)  # fmt: skip
            log.write([{"path": f"batch-{b:06d}", "images": records}])
            _count(stats, records)
            if progress is not None:
                progress(stats)
        log.close()
        # kept by options.threshold, as the resumed and the new batches were counted above
        records = apply_threshold(read_progress(log.out), options.threshold)
        by_key = {item.key: item for item in items}
        good = [r for r in records if "error" not in r]
        if options.format == "wds":
            files = _write_shards(out, options.split, good, by_key, options.shard_size, reader)
        else:
            files = _write_albef(out, options.split, good, by_key)
        decisions = {"format": "vlp-capfilt/1", "settings": settings, "captioner": names[0], "images": records}
        files.append(write_atomic(out / f"decisions_{options.split}.json", json.dumps(decisions, ensure_ascii=False)))
    finally:
        log.close()
        reader.close()
        for m, training in zip(models, was_training):
            m.train(training)
    return stats, files


def _count(stats: CapFiltStats, records: list[dict[str, Any]]) -> None:
    for record in records:
        if "error" in record:
            stats.skipped += 1
            continue
        stats.images += 1
        for text in record["texts"]:
            stats.seen[text["source"]] += 1
            stats.kept[text["source"]] += int(text["kept"])


def apply_threshold(records: list[dict[str, Any]], threshold: float) -> list[dict[str, Any]]:
    """``records`` with every text's ``kept`` set to ``p_match > threshold`` (in place; returned)."""
    for record in records:
        for text in record.get("texts", []):
            text["kept"] = text["p_match"] > threshold
    return records


def read_progress(path: Path) -> list[dict[str, Any]]:
    """Every image record of a progress log, in batch order."""
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [record for line in sorted(lines, key=lambda line: line["path"]) for record in line["images"]]


__all__ = [
    "FORMATS",
    "OUTPUT_SETTINGS",
    "CapFiltOptions",
    "CapFiltStats",
    "WebImage",
    "apply_threshold",
    "batch_seed",
    "filter_batch",
    "kept_texts",
    "match_probabilities",
    "read_progress",
    "read_web_images",
    "run_capfilt",
    "synthetic_captions",
]
