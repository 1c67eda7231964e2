"""What ``vlp index build`` reads besides pixels: the inputs made absolute, the folders they lie in (what a
search may show), the captions that manifests and shards carry, and the embedding of a batch of inputs
(unreadable images skipped with their reason)."""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vlp.config import ConfigError
from vlp.data.image_io import ImageError
from vlp.data.inputs import ImageInput, read_input
from vlp.data.sources.manifest import read_manifest
from vlp.data.sources.webdataset import ShardReader, scan_shard
from vlp.tasks.common import image_batch


def absolute_spec(spec: str | Path) -> str:
    """An input spec made absolute (globs too), so the stored paths hold wherever the index is searched from."""
    return os.path.abspath(os.path.expanduser(str(spec)))


def input_roots(specs: list[str], folders: set[str] | None = None) -> list[str]:
    """The folders the inputs lie in (a folder, a file's folder, a glob's fixed prefix): what may be shown.
    ``folders``: which of the (non-glob) specs are folders, as :func:`vlp.data.inputs.list_inputs` found them;
    the others are then files, and no spec is looked up again (a stat each: ~4 us an input of 10^6)."""
    roots = set()
    for spec in specs:
        fixed = spec
        if folders is not None and not _is_pattern(spec):
            roots.add(spec if spec in folders else os.path.dirname(spec))
            continue
        if _is_pattern(spec):
            fixed = spec[: min(spec.index(ch) for ch in "*?[" if ch in spec)]
            fixed = fixed if fixed.endswith(os.sep) else os.path.dirname(fixed)
        # os.path, not a Path per spec: an index of 10^6 files names 10^6 specs
        fixed = fixed.rstrip(os.sep) or fixed
        roots.add(fixed if os.path.isdir(fixed) else os.path.dirname(fixed))
    return sorted({str(Path(root)) for root in roots})


_CAPTION_SUFFIXES = (".jsonl", ".csv", ".tsv", ".tar")


def _is_pattern(spec: str) -> bool:
    return any(ch in spec for ch in "*?[")


def input_captions(specs: list[str], keys: list[str]) -> list[str | None] | None:
    """The caption of each key when its input carries one (a manifest's caption, a shard's ``.txt`` or
    ``.json`` ``caption``), else None; None when no input has captions."""
    found: dict[str, str] = {}
    # only a manifest, a shard or a glob that may match one can carry captions; other specs (image files,
    # folders) are not looked at, which keeps an index of 10^6 image paths from 10^6 stat calls
    specs = [s for s in specs if _is_pattern(s) or os.path.splitext(s)[1].lower() in _CAPTION_SUFFIXES]
    files = [Path(m) for s in specs for m in (sorted(glob.glob(s, recursive=True)) if not Path(s).exists() else [s])]
    reader = ShardReader()
    for path in files:
        suffix = path.suffix.lower()
        if suffix in (".jsonl", ".csv", ".tsv") and path.is_file():
            try:
                index = read_manifest(path, path.parent, "images", split="all")
            except ConfigError:  # a manifest of image paths only: no captions to keep
                continue
            for record in index.records:
                found.setdefault(str(record["image"]), record["captions"][0])
        elif suffix == ".tar" and path.is_file():
            for sample in scan_shard(path):
                ext = getattr(sample, "image_ext", lambda: None)()
                if ext is None:
                    continue
                text = _shard_caption(reader, sample)
                if text is not None:
                    found[f"{path}/{sample.key}.{ext}"] = text
    reader.close()
    if not found:
        return None
    return [found.get(key) for key in keys]


def _shard_caption(reader: ShardReader, sample: Any) -> str | None:
    try:
        if "txt" in sample.members:
            return reader.read(sample.shard, *sample.members["txt"]).decode("utf-8").strip()
        if "json" in sample.members:
            meta = json.loads(reader.read(sample.shard, *sample.members["json"]).decode("utf-8"))
            caption = meta.get("caption") if isinstance(meta, dict) else None
            return caption if isinstance(caption, str) else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return None


def embed_batch(model: Any, images: list[Image.Image]) -> np.ndarray:
    """``(N, D)`` image embeddings (the model's ``encode_image``) as float32 numpy."""
    device = next(model.parameters()).device
    with torch.no_grad():
        return model.encode_image(image_batch(model, images).to(device)).float().cpu().numpy()


def embed_items(model: Any, items: list[ImageInput], draft: Any, max_pixels: int) -> tuple[list, list, list]:
    """``(keys, vectors, skipped)`` of one batch: unreadable images skipped with their reason; an image that
    decodes but fails preprocessing (a ValueError) costs only itself, not its batch."""
    keys, images, skipped = [], [], []
    for item in items:
        try:
            images.append(read_input(item, draft, max_pixels))
            keys.append(item.key)
        except ImageError as err:
            skipped.append({"path": item.key, "error": str(err)})
    if not images:
        return [], [], skipped
    try:
        return keys, list(embed_batch(model, images)), skipped
    except ValueError:
        if len(images) == 1:
            return [], [], [*skipped, {"path": keys[0], "error": "bad_image: cannot be preprocessed"}]
    out_keys, vectors = [], []
    for key, image in zip(keys, images):
        try:
            vectors.append(embed_batch(model, [image])[0])
            out_keys.append(key)
        except ValueError as err:
            skipped.append({"path": key, "error": f"bad_image: {err}"})
    return out_keys, vectors, skipped
