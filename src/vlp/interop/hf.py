"""Import transformers checkpoint folders into vlp model folders, and export them back.

``import_folder(SRC, DST)`` reads ``SRC/config.json`` (the architecture picks the converter),
builds the matching vlp recipe with the checkpoint's sizes, fills the model strictly from the
weights (``model.safetensors``, a sharded index, or ``pytorch_model.bin`` read with
``weights_only=True``) and writes a vlp folder: ``model.safetensors`` + ``recipe.yaml`` + the
tokenizer files + ``preprocess.json`` + ``transformers_config.json`` (the original config, kept
so that an export restores its extra fields) + ``interop.json`` (family and architecture).

``export_folder(SRC, DST)`` does the reverse: a vlp folder (imported or trained in vlp) becomes a
folder that ``transformers.<Architecture>.from_pretrained`` loads with no missing or unexpected
keys. :func:`load_hf` is the in-memory import that :func:`vlp.io.folders.from_pretrained` uses.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from vlp.config import ConfigError
from vlp.interop.blip import BlipConverter
from vlp.interop.clip import ClipConverter
from vlp.interop.common import ConversionError, Converter, export_state, import_state, listing, read_json, read_weights
from vlp.interop.hub import model_name
from vlp.interop.lxmert import LxmertConverter
from vlp.interop.preprocess import (
    HF_NAME,
    PREPROCESS_NAME,
    Preprocess,
    describe_data,
    fit_data_section,
    from_hf,
    from_recipe,
)
from vlp.interop.siglip import SiglipConverter
from vlp.interop.vilt import ViltConverter
from vlp.interop.visualbert import VisualBertConverter
from vlp.io.factory import build_model
from vlp.io.saving import has_tokenizer, load, load_tokenizer, save_pretrained
from vlp.models.config import ModelConfig
from vlp.recipe import parse_recipe, recipe_dict

TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)
HF_CONFIG_NAME = "transformers_config.json"
INTEROP_NAME = "interop.json"
# the transformers image processor class written on export, per family
PROCESSORS = {
    "clip": "CLIPImageProcessor",
    "vilt": "ViltImageProcessor",
    "blip": "BlipImageProcessor",
    "siglip": "SiglipImageProcessor",
}


def converters() -> list[Converter]:
    """Every converter, one per model family (SigLIP before CLIP: a SigLIP model is also a dual encoder)."""
    return [
        SiglipConverter(),
        ClipConverter(),
        ViltConverter(),
        BlipConverter(),
        LxmertConverter(),
        VisualBertConverter(),
    ]


def _known() -> str:
    return ", ".join(a for c in converters() for a in c.architectures)


def converter_for(config: dict[str, Any], where: str) -> tuple[Converter, str]:
    """``(converter, architecture)`` of a transformers ``config.json``."""
    archs = config.get("architectures") or []
    model_type = config.get("model_type")
    for conv in converters():
        for arch in archs:
            if arch in conv.architectures:
                return conv, arch
    for conv in converters():
        if model_type in conv.model_types and not archs:
            return conv, conv.architectures[0]
    raise ConversionError(
        f"{where}: architectures {archs or '(none)'} / model_type {model_type!r} has no vlp converter; "
        f"supported: {_known()}"
    )


def is_hf_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file()


# ---------------------------------------------------------------------------------------------- import
def _recipe_data(conv: Converter, config: dict[str, Any], arch: str, name: str, pre: Preprocess | None) -> dict:
    data = recipe_dict(conv.recipe)
    data["model"] = {"name": name, **conv.model_section(config, arch)}
    fit_data_section(data.setdefault("data", {}), data["model"], pre)  # sizes from the checkpoint, not the recipe
    return data


def load_hf(folder: str | Path, overrides: dict[str, Any] | None = None) -> tuple[Any, Converter, str, dict]:
    """``(model, converter, architecture, config.json)``: a transformers folder as a vlp model (eval mode)."""
    folder = Path(folder)
    config = read_json(folder / "config.json", "a transformers config.json")
    conv, arch = converter_for(config, str(folder / "config.json"))
    pre = from_hf(folder)
    model = build_model(_recipe_data(conv, config, arch, model_name(folder), pre), overrides, str(folder))
    state = conv.prepare(read_weights(folder), config)
    import_state(model, state, conv.mapping(model, arch), str(folder))
    _check_tokenizer(folder, model)
    return model.eval(), conv, arch, config


def _check_tokenizer(folder: Path, model: Any) -> None:
    """A tokenizer shipped with the weights must not produce ids the embedding table lacks."""
    if not has_tokenizer(folder):
        return
    tokenizer = load_tokenizer(folder)
    text = model.text if model.text is not None else model.decoder
    if text is not None and tokenizer.vocab_size > text.cfg.vocab_size:
        raise ConversionError(
            f"{folder}: the tokenizer has {tokenizer.vocab_size} tokens but the model's vocabulary is "
            f"{text.cfg.vocab_size}; they are not from the same checkpoint"
        )


class _Extras:
    """Stands in for a tokenizer in ``save_pretrained``: its ``save`` writes everything that comes
    along with the weights, so the whole folder is still written atomically."""

    def __init__(self, source: Path, files: dict[str, str]) -> None:
        self.source = source
        self.files = files

    def save(self, folder: Path) -> Path:
        for name in TOKENIZER_FILES:
            if (self.source / name).is_file():
                shutil.copy2(self.source / name, Path(folder) / name)
        for name, text in self.files.items():
            (Path(folder) / name).write_text(text, encoding="utf-8")
        return Path(folder)


def import_folder(src: str | Path, dst: str | Path, overwrite: bool = False) -> Path:
    """Convert the transformers folder ``src`` into the vlp folder ``dst``; returns ``dst``."""
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: checkpoint folder not found")
    model, conv, arch, config = load_hf(src)
    pre = from_hf(src)
    mapping = conv.mapping(model, arch)
    # what the report lists: parameters the source model has no counterpart for (kept at their
    # deterministic initial values), so that nothing is silently invented
    record = {"family": conv.family, "architecture": arch, "source": src.name, "vlp_only": mapping.vlp_only}
    record["data"] = describe_data(src, model.recipe)  # where the data settings came from, defaults named
    files = {
        HF_CONFIG_NAME: json.dumps(config, indent=2, sort_keys=True) + "\n",
        INTEROP_NAME: json.dumps(record, indent=2) + "\n",
    }
    if pre is not None:
        files[PREPROCESS_NAME] = json.dumps(asdict(pre), indent=2) + "\n"
    return save_pretrained(model, dst, tokenizer=_Extras(src, files), overwrite=overwrite)


def check_family(name: Any, conv: Converter | None, folder: Path) -> None:
    if not isinstance(name, (str, Path)):
        raise TypeError(f"create_model(..., pretrained=): the model is named by a recipe name or path, got {name!r}")
    expected = parse_recipe(recipe_dict(name), where=str(name)).model
    assert isinstance(expected, ModelConfig)
    wanted = next((c for c in converters() if c.matches(expected)), None)
    if wanted is not None and conv is not None and wanted.family != conv.family:
        raise ConfigError(
            f"create_model({str(name)!r}, pretrained={str(folder)!r}): the folder holds a {conv.family} model, "
            f"but recipe {str(name)!r} is a {wanted.family} model"
        )


# ---------------------------------------------------------------------------------------------- export
def detect(cfg: Any, folder: Path | None = None) -> Converter | None:
    """The converter of a vlp model: the one recorded at import (``interop.json``), else by structure."""
    if folder is not None and (folder / INTEROP_NAME).is_file():
        family = read_json(folder / INTEROP_NAME, "vlp interop record").get("family")
        for conv in converters():
            if conv.family == family:
                return conv
    return next((c for c in converters() if c.matches(cfg)), None)


def _fill_tied(hf_model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Names the target model ties to a tensor already in ``state`` get that tensor too."""
    groups: dict[int, list[str]] = {}
    for name, tensor in hf_model.state_dict().items():
        groups.setdefault(tensor.untyped_storage().data_ptr(), []).append(name)
    for names in groups.values():
        have = [n for n in names if n in state]
        for name in names:
            if name not in state and have:
                state[name] = state[have[0]]
    return state


def export_folder(src: str | Path, dst: str | Path, architecture: str | None = None, overwrite: bool = False) -> Path:
    """Write the vlp folder ``src`` as a transformers folder ``dst`` (weights, config, tokenizer, preprocessor)."""
    try:
        import transformers
    except ImportError as err:  # pragma: no cover - transformers is a test dependency
        raise ConversionError("exporting to transformers needs the transformers package (pip install vlp[hf])") from err
    src, dst = Path(src), Path(dst)
    if dst.exists() and any(dst.iterdir()) and not overwrite:
        raise FileExistsError(f"{dst}: folder is not empty; pass overwrite=True to replace it")
    model = load(src)
    conv = detect(model.cfg, src)
    if conv is None:
        raise ConversionError(
            f"{src}: model {model.cfg.name!r} has no transformers counterpart (families: "
            f"{', '.join(c.family for c in converters())})"
        )
    # the class follows the model's heads (an imported ViltModel fine-tuned with a VQA head exports as
    # ViltForQuestionAnswering); an explicit one must be of the family and hold those heads
    arch = conv.architecture(model.cfg)
    conv.check_export(model)
    if architecture is not None and architecture != arch:
        raise ConversionError(
            f"{src}: model {model.cfg.name!r} (heads: {sorted(model.cfg.heads) or 'none'}) exports as {arch}, "
            f"not {architecture}"
        )
    base = read_json(src / HF_CONFIG_NAME, "transformers config") if (src / HF_CONFIG_NAME).is_file() else {}
    config_dict = conv.hf_config(model.cfg, base, arch)
    config_dict["architectures"] = [arch]
    cls = getattr(transformers, arch)
    config = cls.config_class.from_dict({k: v for k, v in config_dict.items() if k != "transformers_version"})
    hf_model = cls(config).eval()
    shapes = {k: v.shape for k, v in hf_model.state_dict().items()}
    state = conv.finish(export_state(model, conv.mapping(model, arch), shapes), shapes)
    state = _fill_tied(hf_model, state)
    missing = sorted(set(shapes) - set(state))
    unexpected = sorted(set(state) - set(shapes))
    if missing or unexpected:
        raise ConversionError(
            f"{arch}: export does not cover the model (missing {listing(missing)}; unexpected {listing(unexpected)})"
        )
    hf_model.load_state_dict(state, strict=True)
    if dst.exists():
        shutil.rmtree(dst)
    hf_model.save_pretrained(dst)
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    processor = PROCESSORS.get(conv.family)
    if processor is not None:
        pre = Preprocess.load(src) if (src / PREPROCESS_NAME).is_file() else from_recipe(model.recipe)
        (dst / HF_NAME).write_text(json.dumps(pre.to_hf(processor), indent=2) + "\n", encoding="utf-8")
    return dst
