"""From an index record to a model-ready sample: decode, transform, check, skip.

:class:`SampleProcessor` turns one record of a :class:`SourceIndex` (or one
WebDataset :class:`TarSample`) into the dict that :func:`vlp.data.collate.collate`
batches, or into a :class:`Skipped` record when the input is bad (``strict``
raises :class:`SampleError` instead). :class:`VLDataset` is the map-style
dataset over an index; its random transforms draw from a generator seeded by
(seed, epoch, index), so a sample looks the same whichever worker decodes it.

Output sample keys (all optional except ``meta``): ``image`` (3, S, S) float;
``text`` (caption / question / expression); ``region_features`` (R, F),
``region_boxes`` (R, 4) normalized xyxy, ``region_class_probs`` (R, C);
``tags`` (list of class names); ``answer_targets`` ({answer index: score});
``target_box`` (4,) normalized xyxy; ``image_index`` (int); ``meta`` (dict).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from vlp.data.config import TransformConfig
from vlp.data.decoded_store import DecodedStore
from vlp.data.image_io import ImageError, decode_image
from vlp.data.skipping import Skipped, reject
from vlp.data.sources.common import SourceIndex, check_text
from vlp.data.sources.regions import RegionError, load_regions
from vlp.data.sources.vqav2 import SoftScore, soft_score
from vlp.data.sources.webdataset import ShardReader, TarSample
from vlp.data.transforms import ImageTransform, Item, normalize_uint8, swap_left_right

_META_KEYS = ("image_id", "question_id", "ref_id", "ann_id", "sent_id", "answers", "answer_type", "question_type",
              "captions", "category_id", "target_index", "labels", "attributes")  # fmt: skip


def sample_rng(seed: int, epoch: int, index: int | str) -> random.Random:
    """The generator of one sample's random transforms; depends only on (seed, epoch, index)."""
    return random.Random(f"{seed}:{epoch}:{index}")


@dataclass
class ProcessorConfig:
    image_size: int = 224
    transform: TransformConfig = field(default_factory=TransformConfig)
    train: bool = False
    load_images: bool = True
    max_image_pixels: int = 89_478_485
    max_caption_chars: int = 2000
    max_regions: int = 0  # 0 = keep every region of a region file
    strict: bool = False
    tag_names: list[str] | None = None  # class names for region objects_id -> OSCAR tags
    answer_vocab: list[str] | None = None  # to re-score VQA answers whose left/right a flip swapped
    soft_score: SoftScore = "official"


def normalize_pixels(pixels: np.ndarray, transform: TransformConfig) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 as :func:`vlp.data.transforms.to_tensor` makes each image:
    the same element-wise operations in the same order, so the same values bit for bit (looked up per channel:
    :func:`vlp.data.transforms.normalize_uint8`)."""
    return normalize_uint8(pixels, transform.mean, transform.std, transform.rescale)


class SampleProcessor:
    """Decode + transform + check one record (see the module docstring for the output)."""

    def __init__(self, config: ProcessorConfig) -> None:
        self.config = config
        self.transform = ImageTransform(config.image_size, config.transform, config.train)
        # a sample with a target box must keep it in view: no random crop, the flip stays
        safe = TransformConfig(**{**config.transform.__dict__, "train_crop": "resize"})
        self.box_safe_transform = ImageTransform(config.image_size, safe, config.train)
        self.vocab_index = {a: i for i, a in enumerate(config.answer_vocab or [])}
        self.reader = ShardReader()
        self.store: DecodedStore | None = None  # set by build_dataset for data.decoded_cache

    def _decode(self, image: Any, draft_size: tuple[int, int] | None) -> tuple[Image.Image, tuple[int, int]]:
        store = self.store
        if store is not None and isinstance(image, str) and store.draft_size == draft_size and image in store:
            return store.decode(image)  # the same pixels decode_image gives (see vlp.data.decoded_store)
        return decode_image(image, draft_size, self.config.max_image_pixels)

    def __call__(self, record: dict[str, Any], rng: random.Random, pixels: bool = False) -> dict[str, Any] | Skipped:
        """The sample of ``record``; ``pixels=True`` leaves its ``image`` as the transformed (H, W, 3) uint8
        array, for :func:`normalize_pixels` to turn into what ``pixels=False`` gives."""
        cfg = self.config
        source = str(record.get("image") if isinstance(record.get("image"), str) else record.get("source", "?"))
        text_key = next((k for k in ("caption", "question") if k in record), None)
        texts = [record[text_key]] if text_key else []
        meta = {k: record[k] for k in _META_KEYS if k in record}
        if isinstance(record.get("image"), str):
            meta["image"] = record["image"]
        out: dict[str, Any] = {"meta": meta}
        if "image_index" in record:
            out["image_index"] = record["image_index"]
        boxes = record.get("boxes")
        target = record.get("target_box")
        box_array = np.array((boxes or []) + ([target] if target is not None else []), dtype=np.float64).reshape(-1, 4)
        flipped = False
        size = (record.get("width"), record.get("height"))
        if cfg.load_images and record.get("image") is not None:
            transform = self.box_safe_transform if target is not None else self.transform
            try:
                image, full = self._decode(record["image"], transform.draft_size)
            except ImageError as err:
                return reject(err.reason, source, err.detail, cfg.strict)
            # annotations are in full-resolution pixels; draft mode may have decoded a smaller image
            scale = np.array([image.size[0] / full[0], image.size[1] / full[1]] * 2)
            if pixels:  # the batch path normalizes a whole batch at once (VLDataset.__getitems__)
                item = transform.geometry(Item(image, box_array * scale, texts), rng)
                out["image"] = np.asarray(item.image, dtype=np.uint8)
            else:
                out["image"], item = transform(Item(image, box_array * scale, texts), rng)
            texts, box_array, flipped = item.texts, item.boxes, item.flipped
            size = item.image.size
        if len(box_array):
            if not (size[0] and size[1]):
                return reject(
                    "bad_record", source, "boxes without an image or width/height to normalize them", cfg.strict
                )
            box_array = np.clip(box_array / np.array([size[0], size[1]] * 2, dtype=np.float64), 0.0, 1.0)
            if target is not None:
                out["target_box"] = torch.tensor(box_array[-1], dtype=torch.float32)
                box_array = box_array[:-1]
            keep = (box_array[:, 2] > box_array[:, 0]) & (box_array[:, 3] > box_array[:, 1])  # cropped away?
            if boxes:
                out["region_boxes"] = torch.tensor(box_array[keep], dtype=torch.float32)
                meta["box_keep"] = keep.tolist()
        if text_key:
            out["text"] = texts[0]
        if record.get("tags"):
            out["tags"] = list(record["tags"])
        if "targets" in record:
            out["answer_targets"] = self._answer_targets(record, flipped)
        if flipped:
            meta["flipped"] = True
        if record.get("regions"):
            regions = self._regions(record["regions"], flipped)
            if isinstance(regions, Skipped):
                return regions
            out.update(regions)
        return out

    def _answer_targets(self, record: dict[str, Any], flipped: bool) -> dict[int, float]:
        answers = record.get("answers") or []
        if not flipped or not any(swap_left_right(a) != a for a in answers):
            return dict(record["targets"])
        swapped = [swap_left_right(a) for a in answers]
        counts = Counter(swapped)
        return {
            self.vocab_index[a]: soft_score(c, len(swapped), self.config.soft_score)
            for a, c in counts.items()
            if a in self.vocab_index
        }

    def _regions(self, path: str, flipped: bool) -> dict[str, Any] | Skipped:
        cfg = self.config
        try:
            regions = load_regions(path, cfg.max_regions)
        except RegionError as err:
            return reject(err.reason, path, err.detail, cfg.strict)
        boxes = regions["boxes"]
        if flipped:  # keep region geometry consistent with the mirrored pixels and words
            boxes = boxes.copy()
            boxes[:, [0, 2]] = 1.0 - boxes[:, [2, 0]]
        out: dict[str, Any] = {
            "region_features": torch.from_numpy(regions["features"]),
            "region_boxes": torch.from_numpy(np.ascontiguousarray(boxes)),
        }
        if "class_probs" in regions:
            out["region_class_probs"] = torch.from_numpy(regions["class_probs"])
        if cfg.tag_names and "objects_id" in regions:
            names = cfg.tag_names
            out["tags"] = [names[i] for i in regions["objects_id"].tolist() if 0 <= i < len(names)]
        return out

    def process_tar(self, sample: TarSample | Skipped, rng: random.Random) -> dict[str, Any] | Skipped:
        """Read one WebDataset sample's members and process it like an index record."""
        cfg = self.config
        if isinstance(sample, Skipped):
            return reject(sample.reason, sample.source, sample.detail, cfg.strict)
        source = f"{sample.shard}:{sample.key}"
        try:
            meta: dict[str, Any] = {}
            if "json" in sample.members:
                raw = self.reader.read(sample.shard, *sample.members["json"])
                try:
                    meta = json.loads(raw.decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError) as err:
                    return reject("malformed_json", source + ".json", str(err), cfg.strict)
                if not isinstance(meta, dict):
                    return reject("malformed_json", source + ".json", "expected a JSON object", cfg.strict)
            caption: Any = meta.get("caption")
            if "txt" in sample.members:
                caption = self.reader.read(sample.shard, *sample.members["txt"])
            ext = sample.image_ext()
            image = self.reader.read(sample.shard, *sample.members[ext]) if ext else None
        except (OSError, EOFError) as err:
            return reject("truncated_shard", source, str(err), cfg.strict)
        text = check_text(caption, source, cfg.max_caption_chars, cfg.strict)
        if isinstance(text, Skipped):
            return text
        record = {"image": image, "caption": text, "image_id": meta.get("image_id", meta.get("key", sample.key)),
                  "source": source}  # fmt: skip
        out = self(record, rng)
        if not isinstance(out, Skipped):
            out["meta"]["key"] = sample.key
            out["meta"]["shard"] = sample.shard
        return out


class VLDataset(Dataset):
    """Map-style dataset over a :class:`SourceIndex`; items are sample dicts or :class:`Skipped`.

    Retrieval evaluation reads ``texts``, ``txt2img`` and ``img2txt`` from here
    (present when the index was built in ``images`` mode).
    """

    def __init__(self, index: SourceIndex, processor: SampleProcessor, seed: int = 0) -> None:
        self.index = index
        self.processor = processor
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.index.records)

    def __getitem__(self, i: int) -> dict[str, Any] | Skipped:
        sample = self.processor(self.index.records[i], sample_rng(self.seed, self.epoch, i))
        if not isinstance(sample, Skipped):
            sample["meta"]["index"] = i
        return sample

    def __getitems__(self, indices: list[int], normalize: bool = True) -> list[dict[str, Any] | Skipped]:
        """``[self[i] for i in indices]`` (what a DataLoader fetches for one batch), with the images
        normalized by a few whole-batch tensor ops instead of a handful per image; same values bit for bit.
        ``normalize=False`` leaves each ``image`` as its transformed (H, W, 3) uint8 array (what a DataLoader
        worker sends: :class:`vlp.data.loader.VLPLoader` normalizes the batch in the main process)."""
        samples = []
        for i in indices:
            sample = self.processor(self.index.records[i], sample_rng(self.seed, self.epoch, i), pixels=True)
            if not isinstance(sample, Skipped):
                sample["meta"]["index"] = i
            samples.append(sample)
        if not normalize:
            return samples
        with_image = [s for s in samples if not isinstance(s, Skipped) and "image" in s]
        transform = self.processor.config.transform
        by_shape: dict[tuple[int, ...], list[dict[str, Any]]] = {}
        for sample in with_image:
            by_shape.setdefault(sample["image"].shape, []).append(sample)
        for group in by_shape.values():  # one group unless an eval rule keeps aspect ratios
            images = normalize_pixels(np.stack([s["image"] for s in group]), transform)
            for sample, image in zip(group, images):
                sample["image"] = image
        return samples

    @property
    def texts(self) -> list[str] | None:
        return self.index.texts

    @property
    def txt2img(self) -> list[int] | None:
        return self.index.txt2img

    @property
    def img2txt(self) -> list[list[int]] | None:
        return self.index.img2txt

    @property
    def index_skips(self) -> list[Skipped]:
        return self.index.skips
