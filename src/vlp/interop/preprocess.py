"""Image preprocessing settings of imported checkpoints: read, store, and map onto vlp's one image pipeline.

A transformers folder describes its image pipeline in ``preprocessor_config.json``, or (as
transformers 5 saves a processor) in the ``image_processor`` section of ``processor_config.json``,
which transformers reads first. vlp keeps the settings that matter (resize rule and size, crop,
interpolation, rescale, mean, std) in ``preprocess.json`` beside the converted weights and writes them
into the recipe's data section (:meth:`Preprocess.transform_config`). Nothing here resizes a pixel:
:meth:`Preprocess.data_settings` maps the settings onto :class:`vlp.data.config.TransformConfig`, and
calling a :class:`Preprocess` runs the evaluation pipeline of :mod:`vlp.data.transforms`, the same code
(and rounding, transformers' PIL backend's) as the data loaders' eval split and
``vlp.tasks.common.preprocess_images``. The resize rules (:func:`vlp.data.transforms.resized_size`):

- ``shortest_edge`` (CLIP): the shorter side becomes ``size``, the longer ``int(size * long /
  short)``, then a centre crop whose offsets are ``(old - new) // 2``;
- ``exact`` (BLIP): resize to ``(height, width)``;
- ``vilt`` (ViLT): shorter side ``size``, longer side at most ``int(1333 / 800 * size)``, both
  rounded to multiples of ``size_divisor``.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image

from vlp.data.config import CLIP_MEAN, CLIP_STD, TransformConfig
from vlp.data.image_io import to_rgb
from vlp.data.transforms import ImageTransform, Item, eval_geometry
from vlp.interop.common import ConversionError, read_json
from vlp.io.saving import load_config

PREPROCESS_NAME = "preprocess.json"
HF_NAME = "preprocessor_config.json"
HF_PROCESSOR_NAME = "processor_config.json"  # transformers 5: a processor's settings, images in "image_processor"

# PIL resample codes as transformers stores them
_TO_PIL = {
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
_FROM_PIL = {int(code): name for name, code in _TO_PIL.items()}
_PIL_CODE = {name: int(code) for name, code in _TO_PIL.items()}


@dataclass
class Preprocess:
    """Settings of one image pipeline, in transformers' terms; call it on a PIL image to get ``(3, H, W)``
    float32 (vlp's eval pipeline with :meth:`data_settings`)."""

    resize: Literal["shortest_edge", "exact", "vilt", "none"] = "shortest_edge"
    size: tuple[int, int] = (224, 224)  # (height, width); shortest_edge / vilt read size[0]
    crop: tuple[int, int] | None = (224, 224)  # centre crop (height, width), or None
    interpolation: Literal["bicubic", "bilinear", "nearest", "lanczos", "box", "hamming"] = "bicubic"
    rescale: float = 1 / 255
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    size_divisor: int = 32  # vilt only
    extra: dict[str, Any] = field(default_factory=dict)  # other transformers settings, kept for export

    def __post_init__(self) -> None:
        if self.interpolation not in _TO_PIL:
            raise ConversionError(f"preprocess interpolation {self.interpolation!r}: expected one of {list(_TO_PIL)}")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise ConversionError(f"preprocess mean/std must be 3 values (std > 0), got {self.mean} / {self.std}")
        self.size, self.mean, self.std = tuple(self.size), tuple(self.mean), tuple(self.std)
        self.crop = tuple(self.crop) if self.crop is not None else None

    # ------------------------------------------------------------------ the one pipeline
    def data_settings(self) -> tuple[int, TransformConfig]:
        """``(image_size, transform)`` of a recipe's data section whose eval pipeline is this one."""
        image_size = int(self.crop[0] if self.crop is not None else self.size[0])
        config = TransformConfig(
            eval_crop="center" if self.crop is not None else "resize",
            eval_resize=self.resize,
            eval_size=self.size,
            crop_size=self.crop,
            size_divisor=self.size_divisor,
            rescale=self.rescale,
            mean=self.mean,
            std=self.std,
            interpolation=self.interpolation,
        )
        return image_size, config

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """``image`` (any PIL mode; alpha over white, as transformers converts) -> normalized ``(3, H, W)``."""
        if not isinstance(image, Image.Image):
            raise TypeError(f"preprocess: expected a PIL image, got {type(image).__name__}")
        size, config = self.data_settings()
        try:
            tensor, _ = ImageTransform(size, config)(Item(to_rgb(image)), random.Random(0))  # eval: draws nothing
        except ValueError as err:
            raise ValueError(f"preprocess: {err}") from err
        return tensor

    def batch(self, images: list[Image.Image]) -> torch.Tensor:
        """Stack several images ``(B, 3, H, W)``; they must come out the same size."""
        tensors = [self(image) for image in images]
        shapes = {tuple(t.shape) for t in tensors}
        if len(shapes) > 1:
            raise ValueError(
                f"preprocess: images come out at different sizes {sorted(shapes)}; process them one by one"
            )
        return torch.stack(tensors)

    # ------------------------------------------------------------------ storage
    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / PREPROCESS_NAME
        path.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Preprocess:
        path = Path(path)
        if path.is_dir():
            path = path / PREPROCESS_NAME
        data = read_json(path, "vlp image preprocessing settings (preprocess.json)")
        try:
            return cls(**data)
        except TypeError as err:
            raise ConversionError(f"{path}: {err}") from err

    def transform_config(self) -> dict[str, Any]:
        """The recipe's ``data`` settings (``image_size`` and ``transform``) of this pipeline. The eval resize
        and crop are written only where they differ from what ``eval_crop`` and ``image_size`` imply, so a
        recipe that changes ``image_size`` later still resizes to it."""
        image_size, config = self.data_settings()
        square = (image_size, image_size)
        implied = "shortest_edge" if self.crop is not None else "exact"
        transform: dict[str, Any] = {
            "eval_crop": config.eval_crop,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
        }
        if self.resize != implied:
            transform["eval_resize"] = self.resize
        if self.resize != "none" and self.size != square:
            transform["eval_size"] = list(self.size)
        if self.crop is not None and self.crop != square:
            transform["crop_size"] = list(self.crop)
        if self.resize == "vilt":
            transform["size_divisor"] = self.size_divisor
        if self.rescale != 1 / 255:
            transform["rescale"] = self.rescale
        return {"image_size": image_size, "transform": transform}

    def to_hf(self, processor: str) -> dict[str, Any]:
        """transformers ``preprocessor_config.json`` contents for ``processor`` (e.g. ``CLIPImageProcessor``)."""
        out: dict[str, Any] = dict(self.extra)
        out.update(
            image_processor_type=processor,
            do_resize=self.resize != "none",
            resample=_PIL_CODE[self.interpolation],
            do_rescale=True,
            rescale_factor=self.rescale,
            do_normalize=True,
            image_mean=list(self.mean),
            image_std=list(self.std),
            do_convert_rgb=True,
            do_center_crop=self.crop is not None,
        )
        if self.resize == "exact":
            out["size"] = {"height": self.size[0], "width": self.size[1]}
        elif self.resize in ("shortest_edge", "vilt"):
            out["size"] = {"shortest_edge": self.size[0]}
        if self.resize == "vilt":
            out["size_divisor"] = self.size_divisor
        if self.crop is not None:
            out["crop_size"] = {"height": self.crop[0], "width": self.crop[1]}
        return out


def _pair(value: Any, key: str, path: Path | str) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return value, value
    if isinstance(value, dict):
        if "height" in value and "width" in value:
            return int(value["height"]), int(value["width"])
        if "shortest_edge" in value:
            return int(value["shortest_edge"]), int(value["shortest_edge"])
    raise ConversionError(f"{path}: {key}={value!r}: expected an int or {{height, width}} or {{shortest_edge}}")


def hf_image_settings(folder: str | Path) -> tuple[str, dict[str, Any]] | None:
    """``(where, settings)`` of a transformers folder's image processor, None when it has none.

    Like transformers, the ``image_processor`` section of ``processor_config.json`` comes first, then
    ``preprocessor_config.json``; ``where`` names the file (and section) for messages.
    """
    folder = Path(folder)
    processor = folder / HF_PROCESSOR_NAME
    if processor.is_file():
        section = read_json(processor, "a transformers processor config").get("image_processor")
        if section is not None:
            if not isinstance(section, dict):
                raise ConversionError(f"{processor}: image_processor must be a JSON object, got {section!r}")
            return f"{processor} (image_processor)", section
    path = folder / HF_NAME
    if path.is_file():
        return str(path), read_json(path, "a transformers image processor config")
    return None


def from_hf(folder: str | Path) -> Preprocess | None:
    """The :class:`Preprocess` of a transformers folder's image processor settings (``processor_config.json``
    or ``preprocessor_config.json``, see :func:`hf_image_settings`); None if it has neither."""
    found = hf_image_settings(folder)
    if found is None:
        return None
    path, data = found
    kind = str(data.get("image_processor_type", data.get("feature_extractor_type", "")))
    size_value = data.get("size")
    size = _pair(size_value, "size", path)
    if size is None:
        raise ConversionError(f"{path}: has no 'size'")
    if "Vilt" in kind:
        resize = "vilt"
    elif isinstance(size_value, dict) and "shortest_edge" in size_value:
        resize = "shortest_edge"
    elif isinstance(size_value, int) and kind.startswith("CLIP"):
        resize = "shortest_edge"  # old CLIP configs: an int size meant the shorter edge
    else:
        resize = "exact"
    if data.get("do_resize") is False:
        resize = "none"
    resample = data.get("resample", 3)
    if resample not in _FROM_PIL:
        raise ConversionError(f"{path}: resample={resample!r} is not a PIL resampling code (0-5)")
    crop = _pair(data.get("crop_size"), "crop_size", path) if data.get("do_center_crop") else None
    known = {
        "image_processor_type", "feature_extractor_type", "size", "crop_size", "do_center_crop", "resample",
        "image_mean", "image_std", "rescale_factor", "do_resize", "do_rescale", "do_normalize", "size_divisor",
        "do_convert_rgb",
    }  # fmt: skip
    extra = {k: v for k, v in data.items() if k not in known and not k.startswith("_")}
    do_norm = data.get("do_normalize", True)
    return Preprocess(
        resize=resize,
        size=size,
        crop=crop,
        interpolation=_FROM_PIL[resample],
        rescale=float(data.get("rescale_factor", 1 / 255)) if data.get("do_rescale", True) else 1.0,
        mean=tuple(data.get("image_mean", CLIP_MEAN)) if do_norm else (0.0, 0.0, 0.0),
        std=tuple(data.get("image_std", CLIP_STD)) if do_norm else (1.0, 1.0, 1.0),
        size_divisor=int(data.get("size_divisor", 32)),
        extra=extra,
    )


def fit_data_section(section: dict[str, Any], model: dict[str, Any], pre: Preprocess | None) -> None:
    """Set an imported recipe's ``data`` section from the checkpoint rather than the recipe's defaults.

    ``model``: the recipe's model section (plain data). The image size and transform come from ``pre``
    (the checkpoint's image processor) when there is one, else the image size is the vision tower's;
    ``max_text_len`` never exceeds the text tower's positions (a longer text would not fit it).
    """
    if pre is not None:
        settings = pre.transform_config()
        section["image_size"] = settings["image_size"]
        section["transform"] = {**section.get("transform", {}), **settings["transform"]}
    else:
        size = (model.get("vision") or {}).get("image_size")
        if isinstance(size, int) and not isinstance(size, bool):
            section["image_size"] = size
    tower = model.get("text") or model.get("decoder") or {}
    positions = tower.get("max_positions")
    if isinstance(positions, int) and int(section.get("max_text_len", positions)) > positions:
        section["max_text_len"] = positions


def describe_data(folder: str | Path, recipe: Any) -> str:
    """One line for the conversion report: where an imported model's data settings came from."""
    data, model = recipe.data, recipe.model
    found = hf_image_settings(folder)
    parts = []
    pixels = f"image_size {data.image_size}, mean {list(data.transform.mean)}, std {list(data.transform.std)}"
    if found is not None:
        parts.append(f"from {Path(found[0]).name}: {pixels}")
    elif model.vision is not None:
        parts.append(
            f"no {HF_NAME} or {HF_PROCESSOR_NAME} in {folder}; defaults used: {pixels} "
            "(image_size from the model config, the rest the recipe's)"
        )
    tower = model.text if model.text is not None else model.decoder
    if tower is not None:
        parts.append(f"max_text_len {data.max_text_len} (the text tower has {tower.max_positions} positions)")
    return "; ".join(parts)


def from_recipe(recipe: Any) -> Preprocess:
    """The evaluation pipeline a vlp recipe's ``data`` section describes (for models trained in vlp)."""
    data = recipe.data
    tf = data.transform
    step = eval_geometry(data.image_size, tf)
    return Preprocess(step.rule, step.size, step.crop, tf.interpolation, tf.rescale, tf.mean, tf.std, tf.size_divisor)


def load_preprocess(folder: str | Path) -> Preprocess:
    """The image transform of a model folder: ``preprocess.json`` (vlp), else ``preprocessor_config.json``
    (transformers), else the recipe's data section."""
    folder = Path(folder)
    if (folder / PREPROCESS_NAME).is_file():
        return Preprocess.load(folder / PREPROCESS_NAME)
    found = from_hf(folder)
    if found is not None:
        return found
    if (folder / "recipe.yaml").is_file():
        _, recipe = load_config(folder)
        if recipe is not None:
            return from_recipe(recipe)
    raise FileNotFoundError(
        f"{folder}: no image preprocessing settings (preprocess.json, preprocessor_config.json, or a recipe.yaml "
        "with a data section)"
    )
