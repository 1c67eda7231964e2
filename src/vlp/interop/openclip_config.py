"""OpenCLIP model configs: found, read, and checked field by field against what vlp can reproduce.

An OpenCLIP checkpoint's sizes are only partly in its tensors: the number of attention heads,
layer scale, the activation, the pooling rules and the image pipeline are in the model config.
It comes as

- a hub folder's ``open_clip_config.json`` = ``{"model_cfg": {...}, "preprocess_cfg": {...}}``
  beside ``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin``;
- OpenCLIP's own ``model_configs/<name>.json`` (the bare ``model_cfg``), passed explicitly
  (``vlp convert --openclip-config FILE``).

Every field is one of: honoured (it sets the vlp recipe), inert (it does not change the eval
forward pass: training-only or tokenizer settings) or refused (a :class:`ConversionError` that
names it). An unknown field is refused too: it may change the forward pass, and a silent
mismatch is worse than an error. Absent fields take OpenCLIP's defaults (text heads 8, vision
head width 64, ...), as ``open_clip.create_model`` would.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlp.data.config import CLIP_MEAN, CLIP_STD
from vlp.interop.common import ConversionError, read_json
from vlp.interop.preprocess import Preprocess

CONFIG_NAME = "open_clip_config.json"
# a hub folder's weights, in order of preference (safetensors never unpickles)
WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")

TOP_HONOURED = {"embed_dim", "quick_gelu", "vision_cfg", "text_cfg", "custom_text"}
TOP_INERT = {"cast_dtype", "init_logit_scale"}  # precision; logit_scale's initial value (the weights hold it)
# field -> the value(s) that change nothing; anything else is refused with the reason
TOP_REFUSED = {
    "init_logit_bias": ((None,), "SigLIP's logit bias (vlp's contrastive logits have no bias)"),
    "nonscalar_logit_scale": ((False, None), "a non-scalar logit scale"),
    "multimodal_cfg": ((None, {}), "CoCa's multimodal text decoder"),
}
_CUSTOM_BLOCK = ("qk_norm", "scaled_cosine_attn", "scale_heads", "scale_attn_inner", "scale_attn", "scale_fc")
COMMON_REFUSED = {
    "act_kwargs": ((None, {}), "activation arguments"),
    "block_type": ((None, "default"), "a custom attention block"),
    **{name: ((False, None), "a custom attention block") for name in _CUSTOM_BLOCK},
}
VISION_HONOURED = {"layers", "width", "head_width", "mlp_ratio", "patch_size", "image_size", "ls_init_value"}
VISION_HONOURED |= {"no_ln_pre", "final_ln_after_pool", "pool_type", "pos_embed_type", "norm_kwargs", "proj_type"}
VISION_INERT = {"patch_dropout", "output_tokens", "attn_pooler_queries", "attn_pooler_heads", "timm_model_pretrained"}
VISION_INERT |= {"timm_pool", "timm_proj", "timm_proj_bias", "timm_drop", "timm_drop_path"}  # timm-only
VISION_REFUSED = {
    **COMMON_REFUSED,
    "timm_model_name": ((None, ""), "a timm image tower"),
    "attentional_pool": ((False, None), "an attentional pooler (CoCa)"),
    "proj_bias": ((False, None), "a bias in the image projection"),
}
TEXT_HONOURED = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio", "ls_init_value"}
TEXT_HONOURED |= {"pool_type", "eos_id", "pad_id", "final_ln_after_pool", "proj_bias", "proj_type", "norm_kwargs"}
TEXT_INERT = {"hf_tokenizer_name", "tokenizer_mode", "tokenizer_kwargs", "output_tokens", "hf_model_pretrained"}
TEXT_INERT |= {"hf_proj_type", "hf_pooler_type"}  # only read with hf_model_name, which is refused
TEXT_REFUSED = {
    **COMMON_REFUSED,
    "hf_model_name": ((None, ""), "a Hugging Face text tower"),
    "embed_cls": ((False, None), "an appended [CLS] embedding (CoCa)"),
    "no_causal_mask": ((False, None), "a text tower without the causal mask (vlp masks padding instead)"),
}
PREPROCESS_KEYS = {"size", "mode", "mean", "std", "interpolation", "resize_mode", "fill_color"}


@dataclass
class OpenClipConfig:
    """An OpenCLIP ``model_cfg`` (and ``preprocess_cfg``, empty when the file has none), checked."""

    model: dict[str, Any]
    preprocess: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def vision(self) -> dict[str, Any]:
        return self.model["vision_cfg"]

    @property
    def text(self) -> dict[str, Any]:
        return self.model["text_cfg"]

    @property
    def is_resnet(self) -> bool:
        return isinstance(self.vision.get("layers", 12), (list, tuple))

    def act(self) -> str:
        return "quick_gelu" if self.model.get("quick_gelu", False) else "gelu"

    def eps(self, tower: str) -> float:
        kwargs = (self.vision if tower == "vision" else self.text).get("norm_kwargs") or {}
        return float(kwargs.get("eps", 1e-5))  # torch's LayerNorm default, which OpenCLIP uses


def read_openclip_config(path: str | Path) -> OpenClipConfig:
    """Read and check an OpenCLIP config file (hub ``{"model_cfg", "preprocess_cfg"}`` or a bare model config)."""
    path = Path(path)
    what = "an OpenCLIP config (open_clip_config.json or a model_configs/*.json)"
    data = read_json(path, what)
    if "model_cfg" in data:
        # other top-level entries of a hub config describe the upload, not the model
        model, pre = data["model_cfg"], data.get("preprocess_cfg") or {}
    else:
        model, pre = data, {}
    if not isinstance(model, dict) or not isinstance(pre, dict):
        raise ConversionError(f"{path}: model_cfg and preprocess_cfg must be JSON objects; expected {what}")
    for key in ("vision_cfg", "text_cfg"):
        if not isinstance(model.get(key), dict):
            raise ConversionError(f"{path}: model config has no {key} object; expected {what}")
    config = OpenClipConfig(model, pre, str(path))
    check_fields(config)
    return config


def _check_section(section: dict, honoured: set, inert: set, refused: dict, where: str) -> None:
    for key, value in section.items():
        if key in refused:
            allowed, what = refused[key]
            if value not in allowed:
                raise ConversionError(
                    f"{where}.{key}={value!r}: {what} is not something vlp can reproduce; this checkpoint cannot be "
                    "converted faithfully"
                )
        elif key not in honoured and key not in inert:
            raise ConversionError(
                f"{where}.{key}: an OpenCLIP setting vlp does not know, and it may change the forward pass; "
                f"known: {', '.join(sorted(honoured | inert | set(refused)))}"
            )


def check_fields(config: OpenClipConfig) -> None:
    """Refuse every field whose value vlp cannot reproduce, naming it (see the module docstring)."""
    src = config.source
    _check_section(config.model, TOP_HONOURED, TOP_INERT, TOP_REFUSED, f"{src}: model_cfg")
    vision, text = config.vision, config.text
    _check_section(vision, VISION_HONOURED, VISION_INERT, VISION_REFUSED, f"{src}: vision_cfg")
    _check_section(text, TEXT_HONOURED, TEXT_INERT, TEXT_REFUSED, f"{src}: text_cfg")
    for where, section in (("vision_cfg", vision), ("text_cfg", text)):
        extra = sorted(set(section.get("norm_kwargs") or {}) - {"eps"})
        if extra:
            raise ConversionError(f"{src}: {where}.norm_kwargs {extra}: only eps is supported")
    if not config.is_resnet:
        pool = vision.get("pool_type", "tok")
        if pool != "tok":
            # 'avg' averages the patch tokens without the class token; 'none' returns every token
            raise ConversionError(f"{src}: vision_cfg.pool_type={pool!r}: vlp pools the class token only ('tok')")
        if vision.get("pos_embed_type", "learnable") not in ("learnable", "sin_cos_2d"):
            raise ConversionError(
                f"{src}: vision_cfg.pos_embed_type={vision['pos_embed_type']!r}: expected 'learnable' or 'sin_cos_2d'"
            )
        if vision.get("proj_type", "linear") not in ("linear", "none", None):
            raise ConversionError(f"{src}: vision_cfg.proj_type={vision['proj_type']!r}: expected 'linear' or 'none'")
    pool = text.get("pool_type", "argmax")
    if pool not in ("argmax", "eos", "first", "last"):
        raise ConversionError(f"{src}: text_cfg.pool_type={pool!r}: expected argmax, eos, first or last")
    if text.get("proj_type", "linear") not in ("linear", "none", None):
        raise ConversionError(f"{src}: text_cfg.proj_type={text['proj_type']!r}: expected 'linear' or 'none'")
    extra = sorted(set(config.preprocess) - PREPROCESS_KEYS)
    if extra:
        raise ConversionError(f"{src}: preprocess_cfg {extra}: unknown; known: {', '.join(sorted(PREPROCESS_KEYS))}")
    if config.preprocess.get("mode", "RGB") != "RGB":
        raise ConversionError(f"{src}: preprocess_cfg.mode={config.preprocess['mode']!r}: vlp reads RGB images")
    if config.preprocess.get("interpolation", "bicubic") not in ("bicubic", "bilinear", "nearest"):
        raise ConversionError(
            f"{src}: preprocess_cfg.interpolation={config.preprocess['interpolation']!r}: expected bicubic, bilinear "
            "or nearest"
        )
    if config.preprocess.get("resize_mode", "shortest") not in ("shortest", "squash"):
        raise ConversionError(
            f"{src}: preprocess_cfg.resize_mode={config.preprocess['resize_mode']!r}: vlp reproduces 'shortest' "
            "(resize + centre crop) and 'squash' (resize to the size), not letterboxing"
        )


def activation_of(act: str | None, config: OpenClipConfig | None) -> str:
    if config is None:
        return act or "quick_gelu"
    if act is not None and act != config.act():
        raise ConversionError(
            f"act={act!r} conflicts with {config.source}: quick_gelu={config.model.get('quick_gelu', False)} "
            f"(the model was trained with {config.act()}); leave act unset to follow the config"
        )
    return config.act()


def agree(config: OpenClipConfig, tower: str, found: Mapping[str, Any], defaults: Mapping[str, Any]) -> None:
    """Each config size (or OpenCLIP's default) must be what the weights hold."""
    section = config.text if tower == "text_cfg" else config.vision
    for key, value in found.items():
        expected = section.get(key, defaults[key])
        if isinstance(expected, list):
            expected = tuple(expected)
        if expected != value:
            raise ConversionError(
                f"{config.source}: {tower}.{key} is {expected!r} but the weights hold {value!r}; the config is not "
                "this checkpoint's"
            )


def check_mlp_ratio(config: OpenClipConfig, tower: str, width: int, mlp: int) -> None:
    section = config.text if tower == "text_cfg" else config.vision
    ratio = section.get("mlp_ratio", 4.0)
    if int(width * ratio) != mlp:
        raise ConversionError(
            f"{config.source}: {tower}.mlp_ratio={ratio} gives an MLP of {int(width * ratio)}; the weights hold {mlp}"
        )


def heads_of(width: int, head_width: int, where: str) -> int:
    if head_width < 1 or width % head_width:
        raise ConversionError(f"{where}: width {width} is not a multiple of head_width {head_width}")
    return width // head_width


def hub_files(folder: str | Path) -> tuple[Path, Path | None]:
    """``(weights, config or None)`` of an OpenCLIP hub folder."""
    folder = Path(folder)
    weights = next((folder / n for n in WEIGHT_NAMES if (folder / n).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"{folder}: no OpenCLIP weights ({' or '.join(WEIGHT_NAMES)})")
    config = folder / CONFIG_NAME
    return weights, config if config.is_file() else None


def is_openclip_folder(folder: str | Path) -> bool:
    folder = Path(folder)
    return folder.is_dir() and any((folder / n).is_file() for n in (CONFIG_NAME, *WEIGHT_NAMES))


def image_size_of(config: OpenClipConfig) -> tuple[int, int]:
    size = config.vision.get("image_size", 224)
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def preprocess_of(config: OpenClipConfig | None, image_size: int) -> Any:
    """OpenCLIP's eval image transform as a :class:`vlp.interop.preprocess.Preprocess`."""
    pre = config.preprocess if config is not None else {}
    size = pre.get("size", image_size_of(config) if config is not None else image_size)
    size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    interpolation = pre.get("interpolation", "bicubic")
    mean, std = tuple(pre.get("mean", CLIP_MEAN)), tuple(pre.get("std", CLIP_STD))
    if pre.get("resize_mode", "shortest") == "squash" or size[0] != size[1]:
        # OpenCLIP resizes to (h, w) exactly for squash, and for a non-square size in 'shortest' mode
        return Preprocess("exact", size, None, interpolation, mean=mean, std=std)
    return Preprocess("shortest_edge", size, size, interpolation, mean=mean, std=std)
