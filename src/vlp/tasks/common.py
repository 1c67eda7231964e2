"""What every downstream task shares: loading a model to evaluate, eval data, batching,
image preprocessing for the predict APIs, the metrics table and ``results.json``.

A model to evaluate (``vlp eval TASK --model PATH``) is a model, run or checkpoint folder,
loaded by :func:`vlp.io.folders.load_model` (a fine-tuning run's ``task`` section comes along).

Eval data: ``--data`` is a dataset folder (``data.root``) whose format is recognised from its files
(:mod:`vlp.data.detect`; ``--format`` names a loader type of :mod:`vlp.data.registry` instead), or
a YAML file holding a ``data:`` section.
Without ``--data`` the model's own recipe ``data`` section is used. Image size, text length and
pixel statistics always come from the model's recipe, so evaluation sees what training saw.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from vlp.config import ConfigError, apply_overrides, family_name, from_dict, read_yaml, to_dict
from vlp.data import build_dataset
from vlp.data.batch import Batch
from vlp.data.collate import LoaderCollate
from vlp.data.config import DataConfig
from vlp.data.detect import DATA_KINDS, detect_data
from vlp.data.image_io import ImageError, decode_image
from vlp.data.transforms import ImageTransform, Item
from vlp.io.folders import LoadedModel, load_model

# the table and JSON writers live in their own module; re-exported for the tasks and callers of ``common``
from vlp.tasks.reporting import flatten, metrics_table, write_json, write_results

TASK_RECIPE_DIR = Path(__file__).parent / "recipes"


def task_recipe_path(name: str) -> Path:
    """A built-in task recipe (``src/vlp/tasks/recipes/<name>.yaml``) by name, e.g. ``vqa-vilt-tiny``."""
    path = TASK_RECIPE_DIR / f"{name}.yaml"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in TASK_RECIPE_DIR.glob("*.yaml")))
        raise ConfigError(f"unknown task recipe {name!r}; built-in task recipes: {names}")
    return path


def resolve_device(device: str = "auto") -> Any:
    """``auto`` -> ``cuda`` when available, else ``cpu``; anything else is passed to ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as err:
        raise ConfigError(f"--device: {device!r} is not a device (expected auto, cpu, cuda or cuda:N)") from err


# ----------------------------------------------------------------------------- data


def model_data_config(model: Any) -> DataConfig:
    """The ``data`` section the model was trained with (image size, text length, pixel statistics).

    Falls back to the vision part's ``image_size`` when the model carries no recipe.
    """
    recipe = getattr(model, "recipe", None)
    if recipe is not None and getattr(recipe, "data", None) is not None:
        return recipe.data
    size = getattr(getattr(getattr(model, "cfg", None), "vision", None), "image_size", None)
    return DataConfig(image_size=int(size)) if size else DataConfig()


def eval_data_config(
    base: DataConfig,
    data: str | Path | None,
    fmt: str | None,
    shapes_format: str,
    overrides: Sequence[str] = (),
) -> DataConfig:
    """The data section to evaluate on.

    ``base``: the model's data section (image size, text length, transform are kept from it).
    ``data``: a dataset folder, a YAML file with a ``data:`` section (or a bare data section), or
    None = ``base`` itself. ``fmt``: ``shapesworld`` or a loader type (``karpathy``, ``albef``,
    ``vqav2``, ``manifest``, ...); None = recognised from the folder's files (said on stdout).
    ``shapes_format``: the ShapesWorld format the task reads (``captions``, ``vqa``, ...), which
    also says which loader types the task can read. ``overrides``: ``data.KEY=VALUE`` strings (``data.`` optional).
    """
    plain = to_dict(base)
    if data is not None:
        path = Path(data)
        if path.suffix in (".yaml", ".yml"):
            loaded = read_yaml(path)
            section = loaded.get("data", loaded)
            if not isinstance(section, dict):
                raise ConfigError(f"--data: {path}: expected a 'data:' mapping")
            kept = {k: plain[k] for k in ("image_size", "max_text_len", "transform")}
            plain = {**section, **{k: v for k, v in kept.items() if k not in section}}
        elif path.is_dir():
            paths: dict[str, str] = {}
            if fmt is None:
                found = detect_data(path, DATA_KINDS.get(shapes_format))
                print(f"--data {path}: read as {found.describe()}")
                fmt, paths = found.type, found.paths
            # the model's loader options (e.g. ShapesWorld regions for a region model) carry over to
            # data of the same type; another type starts from its own defaults
            plain.update(root=str(path), paths=paths, options=plain["options"] if fmt == base.type else {})
            plain["type"] = fmt
        else:
            raise ConfigError(f"--data: {path} is neither a dataset folder nor a YAML file")
    if plain.get("type") == "shapesworld":
        options = dict(plain.get("options") or {})
        options["format"] = shapes_format
        plain["options"] = options
    wrapped = {"data": plain}
    apply_overrides(wrapped, [o if o.startswith("data.") else f"data.{o}" for o in overrides])
    return from_dict(DataConfig, wrapped["data"], "data")


def build_eval_dataset(config: DataConfig, split: str, tokenizer: Any = None) -> Any:
    """The evaluation dataset of ``split`` (eval transform; caption formats indexed one record per image)."""
    return build_dataset(config, split, tokenizer, train=False, shuffle=False)


def iterate_batches(
    dataset: Any,
    tokenizer: Any,
    batch_size: int,
    max_text_len: int = 40,
    num_answers: int | None = None,
    num_workers: int = 0,
    skipped: list | None = None,
) -> Iterator[Any]:
    """The dataset's samples in order as :class:`~vlp.data.batch.Batch` es.

    ``dataset``: any map-style dataset of sample dicts (a :class:`~vlp.data.dataset.VLDataset` or an
    in-memory list); bad samples (``Skipped``) are left out and appended to ``skipped``.
    """
    from torch.utils.data import DataLoader

    if batch_size < 1:
        raise ConfigError(f"--batch-size: must be >= 1, got {batch_size}")
    collate = LoaderCollate(tokenizer, max_text_len, num_answers)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=num_workers)
    for item in loader:
        if skipped is not None:
            skipped.extend(item.skips)
        if item.batch is not None:
            yield item.batch


def _decoded(images: Sequence[Any], draft_size: Any, max_pixels: int) -> Iterator[Any]:
    """PIL images or paths -> upright RGB PIL images, one at a time (``draft_size``: see ``decode_image``)."""
    if isinstance(images, (str, Path, Image.Image)):
        raise TypeError("images: expected a list of PIL images or paths, got a single image; wrap it in a list")
    for i, image in enumerate(images):
        if not isinstance(image, (str, Path, Image.Image)):
            raise TypeError(f"images[{i}]: expected a PIL image or a path, got {type(image).__name__}")
        try:
            yield decode_image(image, draft_size, max_pixels)[0]
        except ImageError as err:
            raise ValueError(f"images[{i}]: cannot read {image!s:.80}: {err}") from err


def load_upright(images: list[Any], max_pixels: int = 89_478_485) -> list[Any]:
    """PIL images or paths -> upright RGB PIL images (so their ``size`` is what pixels refer to)."""
    return list(_decoded(images, None, max_pixels))


def preprocess_images(images: Sequence[Any], config: DataConfig) -> Any:
    """PIL images or paths -> normalized ``(B, 3, S, S)`` float tensor with the eval transform of ``config``."""
    transform = ImageTransform(config.image_size, config.transform, train=False)
    tensors = []
    for decoded in _decoded(images, transform.draft_size, config.max_image_pixels):
        tensor, _ = transform(Item(decoded), random.Random(0))  # eval transforms draw nothing
        tensors.append(tensor)
    if not tensors:
        raise ValueError("images: got an empty list")
    sizes = [tuple(t.shape[-2:]) for t in tensors]
    if len(set(sizes)) > 1:  # an eval rule that keeps the aspect ratio (transform.eval_resize vilt or none)
        raise ValueError(
            f"images come out at different sizes {sizes} (height, width) under transform.eval_resize "
            f"{config.transform.eval_resize!r}: pass them one at a time"
        )
    return torch.stack(tensors)


def check_texts(texts: Sequence[str], name: str = "texts") -> list[str]:
    """``texts`` as a non-empty list of strings (a bare string is refused: it is not a list)."""
    if isinstance(texts, str):
        raise TypeError(f"{name}: expected a list of strings, got one string; wrap it in a list")
    out = list(texts)
    for i, text in enumerate(out):
        if not isinstance(text, str):
            raise TypeError(f"{name}[{i}]: expected a string, got {type(text).__name__}")
    if not out:
        raise ValueError(f"{name}: got an empty list")
    return out


def image_batch(model: Any, images: Sequence[Any]) -> Any:
    """A :class:`~vlp.data.batch.Batch` of preprocessed ``images`` for ``model`` (pixel models only)."""
    vision = getattr(getattr(model, "cfg", None), "vision", None)
    if vision is not None and family_name(vision) == "region":
        raise ValueError(
            "this model reads detector region features, not pixels: predict from PIL images needs a pixel "
            "model (patch/grid); evaluate region models on a dataset with region files instead"
        )
    return Batch(images=preprocess_images(images, model_data_config(model)))


def has_fusion(model: Any) -> bool:
    """True when the model has a fusion module (``fuse`` works); False for dual encoders."""
    fusion = getattr(model, "fusion", None)
    return fusion is not None and bool(getattr(fusion, "fuses", True))  # what the part declares


def has_dual(model: Any) -> bool:
    """True when the model has a dual-encoder side (``encode_image`` / ``encode_text``)."""
    return getattr(model, "text_proj", None) is not None


# ----------------------------------------------------------------------------- the eval command


__all__ = [
    "LoadedModel",
    "build_eval_dataset",
    "check_texts",
    "eval_data_config",
    "flatten",
    "has_dual",
    "has_fusion",
    "image_batch",
    "iterate_batches",
    "load_model",
    "metrics_table",
    "model_data_config",
    "preprocess_images",
    "resolve_device",
    "task_recipe_path",
    "write_json",
    "write_results",
]
