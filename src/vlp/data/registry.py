"""The loader types a recipe's ``data.type`` can name, with their paths and options.

Each type declares the ``paths`` keys it reads (with defaults relative to
``root``; ``{split}`` is replaced by the split) and an options dataclass, so
unknown path keys and options are rejected with the allowed names. A map-style
type indexes its files into a :class:`SourceIndex`; ``webdataset`` streams.

Options shared by every type (:class:`CommonOptions`): ``load_images`` (False
for region-feature models that never look at pixels), and precomputed region
features attached by ``paths.regions`` + ``region_template``
(``{image_id}``, ``{image_stem}`` = the image file name without extension, and
``{split}`` are filled in), ``max_regions``, and
``tag_names`` (a file naming the region classes: text lines, a JSON list, or a
JSON object with COCO-style ``categories``) to turn ``objects_id`` into OSCAR
tags.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from vlp.config import ConfigError, from_dict
from vlp.data.config import DataConfig
from vlp.data.sources.albef import read_albef
from vlp.data.sources.coco_instances import read_coco_instances
from vlp.data.sources.common import SourceIndex, read_json
from vlp.data.sources.image_folder import read_image_folder
from vlp.data.sources.karpathy import read_karpathy
from vlp.data.sources.manifest import CsvFormat, read_manifest
from vlp.data.sources.refcoco import read_refcoco
from vlp.data.sources.vqav2 import (
    COCO_TEMPLATE,
    build_answer_vocab,
    default_answer_normalizer,
    read_annotations,
    read_answer_vocab,
    read_vqav2,
    save_answer_vocab,
    vocab_key,
)

logger = logging.getLogger("vlp.data")
Mode = Literal["auto", "pairs", "images"]


@dataclass
class CommonOptions:
    load_images: bool = True
    region_template: str = "{image_id}.npz"
    max_regions: int = 0
    tag_names: str = ""


@dataclass
class CaptionOptions(CommonOptions):
    # pairs: one sample per caption (training); images: one per image + texts/txt2img/img2txt (retrieval eval);
    # auto: pairs when training, images otherwise
    mode: Mode = "auto"


@dataclass
class KarpathyOptions(CaptionOptions):
    restval: bool = True  # train also takes the "restval" images


@dataclass
class VQAOptions(CommonOptions):
    # built from the training annotations and cached here (rebuilt when top_k, min_count or those files change);
    # a file vlp did not build (no "built_from") is used as given
    answer_vocab: str = "answer_vocab.json"
    top_k: int = 3129
    min_count: int = 1  # answers given fewer times (as multiple_choice_answer) stay out of the vocabulary
    soft_score: Literal["official", "min3"] = "official"
    image_template: str = COCO_TEMPLATE


@dataclass
class RefOptions(CommonOptions):
    per: Literal["sentence", "ref"] = "sentence"


@dataclass
class InstanceOptions(CommonOptions):
    include_crowd: bool = False
    skip_empty: bool = False


@dataclass
class StreamOptions(CommonOptions):
    epoch_samples: int = 0  # samples per epoch across ranks; 0 = one pass over the shards
    split: Literal["auto", "shards", "samples"] = "auto"  # how ranks share the shards (see vlp.data.streaming)


@dataclass
class Context:
    """What an index builder gets: the config, the split, resolved paths and parsed options."""

    config: DataConfig
    split: str
    train: bool
    root: Path
    paths: dict[str, Path]
    options: Any
    raw_paths: dict[str, str]  # the recipe's values with {split} filled in, before joining with root
    normalize_answer: Callable[[str], str] | None = None

    def mode(self) -> Literal["pairs", "images"]:
        mode = self.options.mode
        return ("pairs" if self.train else "images") if mode == "auto" else mode


@dataclass
class LoaderSpec:
    name: str
    options: type
    paths: dict[str, str | None]  # key -> default relative path; None = required
    index: Callable[[Context], SourceIndex] | None  # None: a streaming type
    doc: str = ""
    optional: tuple[str, ...] = ()  # path keys left out unless the recipe gives them


LOADERS: dict[str, LoaderSpec] = {}
COMMON_OPTIONAL = ("regions",)  # path keys every type accepts


def register_loader(
    name: str, options: type, paths: dict[str, str | None], doc: str = "", optional: tuple[str, ...] = ()
) -> Callable:
    """Register an index builder (or None for a streaming type) as ``data.type: name``."""

    def decorate(index: Callable[[Context], SourceIndex] | None) -> Callable[[Context], SourceIndex] | None:
        if name in LOADERS:
            raise ConfigError(f"data loader type {name!r} is registered twice")
        LOADERS[name] = LoaderSpec(name, options, paths, index, doc, optional + COMMON_OPTIONAL)
        return index

    return decorate


def loader_spec(name: str) -> LoaderSpec:
    if not name:
        raise ConfigError(
            "data.type: no data named; pass --data FOLDER (its format is recognised) or set data.type to one of "
            f"{', '.join(sorted(LOADERS))} and data.root"
        )
    if name not in LOADERS:
        raise ConfigError(f"data.type: unknown loader {name!r}; allowed: {', '.join(sorted(LOADERS))}")
    return LOADERS[name]


def _fill(template: str, split: str) -> str:
    return template.replace("{split}", split)  # not str.format: shard specs hold {000..009} ranges


def resolve_context(
    config: DataConfig, split: str, train: bool, normalize_answer: Callable[[str], str] | None = None
) -> tuple[LoaderSpec, Context]:
    """Check ``paths`` and ``options`` against the type's declaration and resolve them."""
    spec = loader_spec(config.type)
    allowed = {**spec.paths, **{key: "" for key in spec.optional}}
    unknown = sorted(set(config.paths) - set(allowed))
    if unknown:
        raise ConfigError(
            f"data.paths.{unknown[0]}: unknown path for type {spec.name!r}; allowed: {', '.join(sorted(allowed))}"
        )
    root = Path(config.root).expanduser() if config.root else Path(".")
    if config.root and not root.is_dir():
        raise ConfigError(f"data.root: {root} is not a folder")
    paths: dict[str, Path] = {}
    raw_paths: dict[str, str] = {}
    for key, default in allowed.items():
        value = config.paths.get(key, default)
        if value is None:
            raise ConfigError(f"data.paths.{key}: required for type {spec.name!r} (relative to data.root)")
        if key in spec.optional and not value:
            continue
        raw_paths[key] = _fill(value, split)
        filled = Path(raw_paths[key]).expanduser()
        paths[key] = filled if filled.is_absolute() else root / filled
    options = from_dict(spec.options, config.options, "data.options")
    return spec, Context(config, split, train, root, paths, options, raw_paths, normalize_answer)


def read_tag_names(path: Path) -> list[str]:
    """Class names from a text file (one per line), a JSON list, or JSON with COCO ``categories``."""
    if path.suffix == ".json":
        data = read_json(path, "tag_names")
        if isinstance(data, dict):
            data = data.get("categories")
        if isinstance(data, list) and all(isinstance(c, dict) for c in data):
            data = [c.get("name") for c in sorted(data, key=lambda c: c.get("id", 0))]
        if not isinstance(data, list) or not all(isinstance(n, str) for n in data):
            raise ConfigError(f"data.options.tag_names: {path}: expected a list of names or COCO 'categories'")
        return data
    try:
        return [line.strip().split(",")[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except FileNotFoundError as err:
        raise ConfigError(f"data.options.tag_names: {path}: file not found") from err


def attach_regions(ctx: Context, index: SourceIndex) -> None:
    """Point every record at its region file when ``paths.regions`` is set."""
    folder = ctx.paths.get("regions")
    if folder is None:
        return
    template = ctx.options.region_template
    for record in index.records:
        image = record.get("image")
        stem = Path(image).stem if isinstance(image, str) else ""
        try:
            name = _fill(template, ctx.split).format(image_id=record.get("image_id"), image_stem=stem)
        except (KeyError, ValueError, IndexError) as err:
            raise ConfigError(
                f"data.options.region_template {template!r}: {err} (fields: image_id, image_stem)"
            ) from err
        record["regions"] = str(folder / name)


# ----------------------------------------------------------------------------- the map-style types


@dataclass
class ManifestOptions(CaptionOptions):
    # OpenCLIP's --csv-separator / --csv-img-key / --csv-caption-key; empty = sniffed from the header / the
    # usual names (image, filepath, path, file_name / caption, text, title)
    csv_separator: str = ""
    csv_img_key: str = ""
    csv_caption_key: str = ""


@register_loader("manifest", ManifestOptions, {"manifest": "manifest_{split}.jsonl", "images": ""},
                 "an image folder + a JSONL or CSV manifest")  # fmt: skip
def _manifest(ctx: Context) -> SourceIndex:
    cfg, options = ctx.config, ctx.options
    csv_format = CsvFormat(options.csv_separator, options.csv_img_key, options.csv_caption_key)
    template = cfg.paths.get("manifest", LOADERS["manifest"].paths["manifest"]) or ""
    return read_manifest(ctx.paths["manifest"], ctx.paths["images"], ctx.mode(), cfg.max_caption_chars, cfg.strict,
                         ctx.split, csv_format, template, ctx.root)  # fmt: skip


@register_loader("karpathy", KarpathyOptions, {"annotations": None, "images": ""},
                 "Karpathy-split dataset_coco.json / dataset_flickr30k.json")  # fmt: skip
def _karpathy(ctx: Context) -> SourceIndex:
    cfg = ctx.config
    index = read_karpathy(ctx.paths["annotations"], ctx.paths["images"], ctx.split, ctx.mode(),
                          ctx.options.restval, cfg.max_caption_chars, cfg.strict)  # fmt: skip
    if not index.records and ctx.split not in index.extras["splits_found"]:
        raise ConfigError(f"{ctx.paths['annotations']}: no images in split {ctx.split!r}; "
                          f"the file has {', '.join(index.extras['splits_found'])}")  # fmt: skip
    return index


@register_loader("albef", CaptionOptions, {"annotations": None, "images": ""}, "ALBEF/BLIP caption JSON lists")
def _albef(ctx: Context) -> SourceIndex:
    cfg = ctx.config
    return read_albef(ctx.paths["annotations"], ctx.paths["images"], ctx.mode(), cfg.max_caption_chars, cfg.strict)


def _answer_vocab(ctx: Context) -> list[str]:
    options = ctx.options
    if options.top_k < 1 or options.min_count < 1:
        raise ConfigError(f"data.options: top_k and min_count must be >= 1, got {options.top_k}, {options.min_count}")
    normalize = ctx.normalize_answer or default_answer_normalizer()
    path = ctx.root / options.answer_vocab if options.answer_vocab else None
    source = ctx.paths.get("train_annotations") or (ctx.paths.get("annotations") if ctx.train else None)
    key = vocab_key([source], options.top_k, options.min_count, normalize) if source and source.is_file() else None
    if path is not None and path.is_file():
        cached, built_from = read_answer_vocab(path)
        if built_from is None:  # the user's own file: used as given, never overwritten
            if len(cached) != options.top_k:
                logger.warning("answer vocabulary: %d answers from %s, a file vlp did not build; data.options.top_k="
                               "%d does not apply (delete it, or name another data.options.answer_vocab, to build "
                               "one from the training annotations)", len(cached), path, options.top_k)  # fmt: skip
            return cached
        if key is None or built_from == key:  # nothing to check it against (an eval split), or up to date
            if built_from.get("top_k") != options.top_k:
                logger.warning("answer vocabulary %s was built with top_k=%s, not %d, and no training annotations "
                               "are named to rebuild it", path, built_from.get("top_k"), options.top_k)  # fmt: skip
            return cached
        changed = sorted(k for k in key if built_from.get(k) != key[k])
        logger.info("answer vocabulary %s is stale (%s changed): rebuilding it", path, ", ".join(changed))
    if source is None:
        raise ConfigError(
            f"vqav2 split {ctx.split!r}: no answer vocabulary; set data.options.answer_vocab to an existing file "
            "or data.paths.train_annotations (the vocabulary comes from the training answers)"
        )
    vocab = build_answer_vocab(read_annotations(source), options.top_k, normalize, options.min_count)
    if path is not None:
        try:
            save_answer_vocab(path, vocab, key)
            logger.info("answer vocabulary of %d answers built from %s and saved to %s", len(vocab), source, path)
        except OSError as err:
            logger.warning("could not save the answer vocabulary to %s (%s); it is kept in memory", path, err)
    return vocab


@register_loader("vqav2", VQAOptions, {"questions": None, "images": ""}, "VQAv2 questions + annotations",
                 optional=("annotations", "train_annotations"))  # fmt: skip
def _vqav2(ctx: Context) -> SourceIndex:
    cfg, options = ctx.config, ctx.options
    annotations = ctx.paths.get("annotations")
    vocab = _answer_vocab(ctx) if annotations is not None else None
    return read_vqav2(ctx.paths["questions"], ctx.paths["images"], annotations, vocab, options.image_template,
                      options.soft_score, ctx.normalize_answer, cfg.max_caption_chars, cfg.strict)  # fmt: skip


@register_loader("refcoco", RefOptions, {"refs": "refs(unc).p", "instances": "instances.json", "images": ""},
                 "RefCOCO/+/g refs pickle + instances.json")  # fmt: skip
def _refcoco(ctx: Context) -> SourceIndex:
    cfg = ctx.config
    return read_refcoco(ctx.paths["refs"], ctx.paths["instances"], ctx.paths["images"], ctx.split,
                        ctx.options.per, cfg.max_caption_chars, cfg.strict)  # fmt: skip


@register_loader("coco_instances", InstanceOptions, {"instances": None, "images": ""}, "COCO instances JSON")
def _coco_instances(ctx: Context) -> SourceIndex:
    options = ctx.options
    return read_coco_instances(ctx.paths["instances"], ctx.paths["images"], options.include_crowd,
                               options.skip_empty, ctx.config.strict)  # fmt: skip


@dataclass
class ImageFolderOptions(CommonOptions):
    class_names: str = ""  # a file naming the classes (lines / JSON list in sorted-folder order, or folder -> name)
    test_fraction: float = 0.3  # one folder without split folders: the seeded share of each class in "test"
    split_seed: int = 0


@register_loader("image_folder", ImageFolderOptions, {"images": ""},
                 "one sub-folder of images per class (ImageFolder), optionally under train/ val/ test/")  # fmt: skip
def _image_folder(ctx: Context) -> SourceIndex:
    options = ctx.options
    names = Path(options.class_names).expanduser() if options.class_names else None
    if names is not None and not names.is_absolute():
        names = ctx.root / names
    return read_image_folder(ctx.paths["images"], ctx.split, names, options.test_fraction, options.split_seed)


register_loader("webdataset", StreamOptions, {"shards": None}, "WebDataset tar shards (img2dataset layout)")(None)


# ----------------------------------------------------------------------------- ShapesWorld

SHAPES_FORMATS: dict[str, tuple[str, dict[str, str], dict[str, Any]]] = {
    "captions": ("albef", {"annotations": "annotations/captions_{split}.json"}, {}),
    "karpathy": ("karpathy", {"annotations": "annotations/dataset_shapes.json"}, {"restval": False}),
    "manifest": ("manifest", {"manifest": "manifest_{split}.jsonl"}, {}),
    "vqa": ("vqav2", {
        "questions": "annotations/v2_OpenEnded_shapes_{split}_questions.json",
        "annotations": "annotations/v2_shapes_{split}_annotations.json",
        "train_annotations": "annotations/v2_shapes_train_annotations.json",
        "images": "images/{split}",
    }, {"image_template": "{image_id:07d}.png", "answer_vocab": "annotations/answer_vocab.json"}),
    "refcoco": ("refcoco", {"refs": "annotations/refs(unc).p", "instances": "annotations/instances.json",
                            "images": "images"}, {}),
    "instances": ("coco_instances", {"instances": "annotations/instances_{split}.json", "images": "images/{split}"},
                  {}),
    "webdataset": ("webdataset", {"shards": "shards/{split}-*.tar"}, {}),
}  # fmt: skip


@dataclass
class ShapesOptions:
    format: Literal["captions", "karpathy", "manifest", "vqa", "refcoco", "instances", "webdataset"] = "captions"
    regions: bool = False  # attach regions/{image_id:07d}.npz (tags named by meta.json categories)
    mode: Mode = "auto"
    load_images: bool = True
    max_regions: int = 0
    per: Literal["sentence", "ref"] = "sentence"
    soft_score: Literal["official", "min3"] = "official"
    top_k: int = 3129
    min_count: int = 1
    epoch_samples: int = 0
    split: Literal["auto", "shards", "samples"] = "auto"


register_loader("shapesworld", ShapesOptions, {}, "a ShapesWorld folder (vlp data synth), any of its formats")(None)


def shapes_delegate(config: DataConfig) -> DataConfig:
    """The real-format config that reads ShapesWorld's ``options.format`` files under ``root``."""
    options = from_dict(ShapesOptions, config.options, "data.options")
    kind, paths, extra = SHAPES_FORMATS[options.format]
    spec = LOADERS[kind]
    wanted: dict[str, Any] = dict(extra)
    fields = {f.name for f in dataclasses.fields(spec.options)}
    for f in dataclasses.fields(ShapesOptions):
        if f.name in fields:
            wanted[f.name] = getattr(options, f.name)
    merged = dict(paths)
    if options.regions:
        merged["regions"] = "regions"
        wanted.update(region_template="{image_stem}.npz", tag_names="meta.json")
    merged.update(config.paths)  # explicit paths still win
    return dataclasses.replace(config, type=kind, paths=merged, options=wanted)


def tag_names_for(ctx: Context) -> list[str] | None:
    if not ctx.options.tag_names:
        return None
    return read_tag_names(ctx.root / ctx.options.tag_names)


def describe() -> str:
    """One line per loader type, for help texts."""
    return "\n".join(f"{name}: {spec.doc}" for name, spec in sorted(LOADERS.items()))
