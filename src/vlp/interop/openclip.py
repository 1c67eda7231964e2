"""OpenCLIP / OpenAI CLIP state dicts -> the vlp ``clip`` (ViT) and ``clip-resnet`` (ModifiedResNet) recipes.

open_clip is not needed: the state dict is read from a ``.safetensors`` file or a ``.pt`` /
``.bin`` file with ``torch.load(weights_only=True)`` (a training checkpoint's ``state_dict``
entry and DDP's ``module.`` prefix are unwrapped; TorchScript archives are refused). A hub folder
(``open_clip_config.json`` + ``open_clip_model.safetensors`` / ``open_clip_pytorch_model.bin``) is read
whole. Widths, depths and the image grid come from the tensor shapes; attention heads, layer scale,
the activation, pooling, projections and the image pipeline come from the OpenCLIP config (see
:mod:`vlp.interop.openclip_config`: every field is honoured or refused by name, and checked against
the shapes). Without a config the heads are guessed as ``width // 64`` (OpenAI's ``build_model``
rule, wrong e.g. for ViT-H-14's head width 80) and a warning says so.

Layout (``visual.`` = image tower):

=============================================  ==========================================
OpenCLIP                                       vlp
=============================================  ==========================================
visual.conv1 / class_embedding / ln_pre        vision.patch_embed / cls_token / norm_pre
visual.positional_embedding                    vision.pos_embed
visual.transformer.resblocks.i.attn.in_proj_*  vision.transformer.layers.i.attn.qkv (same q, k, v order)
  .attn.out_proj / ln_1 / mlp.c_fc / mlp.c_proj / ln_2   .attn.out / norm1 / mlp.fc1 / mlp.fc2 / norm2
visual.ln_post / visual.proj (D, E)            vision.norm / image_proj.weight (E, D), transposed
visual.conv1..3, bn1..3, layer1-4, attnpool    vision.* (same names: ModifiedResNet)
token_embedding / positional_embedding         text.embeddings.word / position
transformer.resblocks.i.*  / ln_final          text.layers.i.* / text.final_norm
text_projection (D, E) / logit_scale           text_proj.weight (E, D), transposed / logit_scale
text_projection.weight / .bias (proj_bias)     text_proj.weight / .bias (image_proj.bias: zero)
...resblocks.i.ls_1 / ls_2 (ls_init_value)     ...layers.i.ls1 / ls2 (layer scale gamma)
=============================================  ==========================================

The ModifiedResNet's attention pool already outputs the joint embedding; vlp's model always
has an ``image_proj``, which is set to the identity (no bias) and reported as such. OpenCLIP's
``argmax`` text pooling (at the highest token id, CLIP's ``<|endoftext|>``) is vlp's ``argmax``;
``eos`` / ``first`` / ``last`` pooling are vlp's ``eos`` with the config's ``eos_id`` / ``cls`` / the last token.
OpenAI's models use QuickGELU; most LAION-trained OpenCLIP models use GELU: the state dict does not
say which, the config's ``quick_gelu`` does (without a config: ``act``, default quick_gelu).
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from vlp.interop.common import ConversionError, StateMapping, Table, import_state, listing, read_weights
from vlp.interop.hub import model_name
from vlp.interop.openclip_config import (
    CONFIG_NAME,
    WEIGHT_NAMES,
    OpenClipConfig,
    activation_of,
    agree,
    check_mlp_ratio,
    heads_of,
    hub_files,
    image_size_of,
    preprocess_of,
    read_openclip_config,
)
from vlp.interop.preprocess import fit_data_section
from vlp.io.factory import build_model
from vlp.io.saving import save_pretrained
from vlp.recipe import recipe_dict
from vlp.text.bpe import ClipTokenizer

# non-tensor or non-weight entries of OpenAI / OpenCLIP state dicts
IGNORED = ("input_resolution", "context_length", "vocab_size", "attn_mask")


def read_openclip(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of an OpenCLIP checkpoint file (unwrapping ``state_dict`` and ``module.``)."""
    path = Path(path)
    if path.suffix in (".pt", ".bin", ".pth"):
        try:
            data = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as err:
            raise ConversionError(
                f"{path}: cannot be read as a tensor-only torch checkpoint ({err}); TorchScript archives (OpenAI's "
                "original .pt) and pickled objects are refused - load it with open_clip once and save its state_dict"
            ) from err
        if isinstance(data, Mapping) and isinstance(data.get("state_dict"), Mapping):
            data = data["state_dict"]
        if not isinstance(data, Mapping):
            raise ConversionError(f"{path}: expected a state dict, got {type(data).__name__}")
        state = dict(data)
    else:
        state = read_weights(path)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    if "text.token_embedding.weight" in state and "token_embedding.weight" not in state:
        # OpenCLIP's CustomTextCLIP (custom_text: true) keeps the text tower under ``text.``
        state = {k.removeprefix("text."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if k not in IGNORED}
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ConversionError(f"{path}: entries that are not tensors: {listing(bad)}")
    return state


def _depth(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)\.")
    found = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    return max(found) + 1 if found else 0


def _need(state: Mapping[str, torch.Tensor], *keys: str, where: str) -> None:
    missing = [k for k in keys if k not in state]
    if missing:
        raise ConversionError(f"{where}: not an OpenCLIP/OpenAI CLIP state dict (missing {listing(missing)})")


# what the conversion report says about vlp parameters OpenCLIP has no tensor for
NOTES = {
    "image_proj.weight": "identity: OpenCLIP's image tower already outputs the joint embedding (attention pool, "
    "or proj_type 'none')",
    "image_proj.bias": "zero: OpenCLIP's image projection has no bias (vlp's two projections share proj_bias)",
    "text_proj.weight": "identity: text_cfg.proj_type 'none' (the pooled text is the embedding)",
}


def _text_section(state: Mapping[str, torch.Tensor], act: str, config: OpenClipConfig | None) -> dict:
    width = state["ln_final.weight"].shape[0]
    vocab = state["token_embedding.weight"].shape[0]
    layers = _depth(state, "transformer.resblocks.")
    mlp = state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    positions = state["positional_embedding"].shape[0]
    cfg = config.text if config is not None else {}
    if config is not None:
        found = {"width": width, "vocab_size": vocab, "layers": layers, "context_length": positions}
        agree(config, "text_cfg", found, {"width": 512, "vocab_size": 49408, "layers": 12, "context_length": 77})
        check_mlp_ratio(config, "text_cfg", width, mlp)
        heads = int(cfg.get("heads", 8))  # OpenCLIP's CLIPTextCfg default
        if width % heads:
            raise ConversionError(f"{config.source}: text_cfg.heads={heads} does not divide the width {width}")
    else:
        heads = max(width // 64, 1)
    pool = cfg.get("pool_type", "argmax")
    # OpenCLIP's argmax pools at text.argmax(dim=-1), the first highest id (CLIP's <|endoftext|>) wherever eot
    # sits in the vocabulary: vlp's argmax pooling is the same rule (as the CLIP import writes it), whereas a
    # fixed eos id vocab - 1 would miss an eot below it (a tokenizer smaller than the embedding table)
    pooling, eos_id = {"argmax": ("argmax", -1), "first": ("cls", -1), "last": ("eos", -1)}.get(
        pool, ("eos", int(cfg.get("eos_id", 2)))
    )
    if pool == "last":
        warnings.warn(
            f"{config.source if config else ''}: text_cfg.pool_type='last': OpenCLIP pools the last position and "
            "masks no padding; vlp pools the last kept token of attention_mask: give padded text an all-True mask "
            "(pad tokens as real tokens) to get OpenCLIP's embeddings",
            UserWarning,
            stacklevel=3,
        )
    # final_ln_after_pool: LayerNorm acts per token, so normalizing the pooled token is the same thing
    return {
        "type": "bert",
        "vocab_size": vocab,
        "dim": width,
        "layers": layers,
        "heads": heads,
        "mlp_dim": mlp,
        "max_positions": positions,
        "type_vocab_size": 0,
        "dropout": 0.0,
        "eps": config.eps("text") if config is not None else 1e-5,
        "act": act,
        "norm_first": True,
        "causal": True,
        "pooling": pooling,
        "eos_id": eos_id,
        "final_norm": True,
        "embed_norm": False,
        # the weights hold gamma; the init value only matters for training from scratch
        "layer_scale": _layer_scale(state, "transformer.resblocks.0.", cfg),
    }


def _layer_scale(state: Mapping[str, torch.Tensor], block: str, cfg: Mapping[str, Any]) -> float | None:
    if f"{block}ls_1.gamma" not in state:
        return cfg.get("ls_init_value")  # set but absent from the weights: the strict load names the gap
    value = cfg.get("ls_init_value")
    return float(value) if value is not None else 1e-5


def _vit_section(state: Mapping[str, torch.Tensor], act: str, config: OpenClipConfig | None, where: str) -> dict:
    _need(state, "visual.conv1.weight", "visual.positional_embedding", where=where)
    width = state["visual.conv1.weight"].shape[0]
    patch = state["visual.conv1.weight"].shape[-1]
    positions = state["visual.positional_embedding"].shape[0]
    layers = _depth(state, "visual.transformer.resblocks.")
    mlp = state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    cfg = config.vision if config is not None else {}
    if config is not None:
        agree(config, "vision_cfg", {"width": width, "layers": layers}, {"width": 768, "layers": 12})
        check_mlp_ratio(config, "vision_cfg", width, mlp)
        size = cfg.get("patch_size", 16)
        if (size if isinstance(size, int) else tuple(size)) not in (patch, (patch, patch)):
            raise ConversionError(f"{config.source}: vision_cfg.patch_size is {size!r} but the weights hold {patch}")
        height, wide = image_size_of(config)
        if (height // patch) * (wide // patch) + 1 != positions:
            raise ConversionError(
                f"{config.source}: vision_cfg.image_size {height}x{wide} with patch {patch} needs "
                f"{(height // patch) * (wide // patch) + 1} positions but the weights hold {positions}"
            )
        image: int | list[int] = height if height == wide else [height, wide]
        heads = heads_of(width, int(cfg.get("head_width", 64)), f"{config.source}: vision_cfg")
        pre_norm = not cfg.get("no_ln_pre", False)
    else:
        image = patch * round((positions - 1) ** 0.5)
        heads = max(width // 64, 1)
        pre_norm = "visual.ln_pre.weight" in state
    return {
        "type": "patch",
        "image_size": image,
        "patch_size": patch,
        "dim": width,
        "layers": layers,
        "heads": heads,
        "mlp_dim": mlp,
        "act": act,
        "pre_norm": pre_norm,
        "final_norm": True,  # final_ln_after_pool: the same for the class token (LayerNorm is per token)
        "patch_bias": False,
        "eps": config.eps("vision") if config is not None else 1e-5,
        "layer_scale": _layer_scale(state, "visual.transformer.resblocks.0.", cfg),
    }


def _resnet_section(state: Mapping[str, torch.Tensor], config: OpenClipConfig | None) -> dict:
    layers = [_depth(state, f"visual.layer{i}.") for i in range(1, 5)]
    grid = round((state["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
    width = state["visual.layer1.0.conv1.weight"].shape[0]
    head_width = 64
    if config is not None:
        agree(config, "vision_cfg", {"layers": tuple(layers), "width": width}, {"layers": (), "width": 64})
        if image_size_of(config) != (grid * 32, grid * 32):
            raise ConversionError(
                f"{config.source}: vision_cfg.image_size is {config.vision.get('image_size', 224)!r} but the "
                f"attention pool's positions are for {grid * 32}"
            )
        head_width = int(config.vision.get("head_width", 64))
    return {
        "type": "resnet_clip",
        "image_size": grid * 32,
        "layers": layers,
        "width": width,
        "heads": heads_of(width * 32, head_width, "vision_cfg"),  # OpenCLIP: width * 32 // head_width
        "dim": state["visual.attnpool.c_proj.weight"].shape[0],
    }


def _projection_kind(state: Mapping[str, torch.Tensor], config: OpenClipConfig | None) -> tuple[str, int | None]:
    """The text projection (``param`` (D, E), ``linear`` with bias, or ``none``) and its output size."""
    if "text_projection" in state:
        kind, out = "param", state["text_projection"].shape[1]
    elif "text_projection.weight" in state:
        kind, out = "linear", state["text_projection.weight"].shape[0]
    else:
        kind, out = "none", None
    if config is not None:
        cfg = config.text
        wanted = "none" if cfg.get("proj_type", "linear") in ("none", None) else (
            "linear" if cfg.get("proj_bias", False) else "param"
        )  # fmt: skip
        if wanted != kind:
            raise ConversionError(
                f"{config.source}: text_cfg proj_type={cfg.get('proj_type', 'linear')!r} / "
                f"proj_bias={cfg.get('proj_bias', False)} do not match the weights' text projection ({kind})"
            )
    return kind, out


def openclip_model_section(
    state: Mapping[str, torch.Tensor],
    act: str | None = None,
    where: str = "",
    config: OpenClipConfig | None = None,
) -> dict:
    """The ``model`` section of a vlp recipe for an OpenCLIP state dict: sizes from the shapes, and heads,
    activation, layer scale and pooling from ``config``. Without a config the heads are guessed as
    ``width // 64`` (OpenAI's rule, wrong for ViT-H/g/bigG and other head widths) and a warning says so."""
    _need(state, "token_embedding.weight", "positional_embedding", "ln_final.weight", "logit_scale", where=where)
    if config is None:
        warnings.warn(
            f"{where}: no OpenCLIP config (open_clip_config.json beside the weights, or --openclip-config): "
            f"attention heads were guessed with OpenAI's head width 64 and the activation as {act or 'quick_gelu'}; "
            "models with another head width (ViT-H-14: 80, ViT-g-14, ViT-bigG-14, ...) come out wrong without it",
            UserWarning,
            stacklevel=3,
        )
    act = activation_of(act, config)
    text = _text_section(state, act, config)
    kind, embed_dim = _projection_kind(state, config)
    if "visual.class_embedding" in state:
        vision = _vit_section(state, act, config, where)
        image_width = vision["dim"]
        image_out = state["visual.proj"].shape[1] if "visual.proj" in state else image_width
    elif "visual.attnpool.positional_embedding" in state:
        vision = _resnet_section(state, config)
        image_out = vision["dim"]
    else:
        raise ConversionError(
            f"{where}: no visual.class_embedding (ViT) or visual.attnpool (ModifiedResNet): an image tower vlp "
            "does not know"
        )
    embed_dim = embed_dim if embed_dim is not None else text["dim"]
    if config is not None and config.model.get("embed_dim", embed_dim) != embed_dim:
        raise ConversionError(
            f"{config.source}: embed_dim is {config.model['embed_dim']} but the weights project to {embed_dim}"
        )
    if image_out != embed_dim:
        raise ConversionError(f"{where}: the image tower outputs {image_out} features, the text tower {embed_dim}")
    return {
        "name": "openclip",
        "text": text,
        "vision": vision,
        "fusion": {"type": "none"},
        "embed_dim": embed_dim,
        "proj_bias": kind == "linear",
        "image_pool": "first",
    }


def openclip_mapping(model: Any, state: Mapping[str, torch.Tensor]) -> StateMapping:
    """vlp names -> OpenCLIP names (for a state dict whose projections were transposed to ``(E, D)``)."""
    table: Table = {}

    def blocks(ours: str, theirs: str, layers: Any) -> None:
        for i, layer in enumerate(layers):
            o, t = f"{ours}.{i}", f"{theirs}.{i}"
            table[f"{o}.attn.qkv.weight"] = (f"{t}.attn.in_proj_weight",)
            table[f"{o}.attn.qkv.bias"] = (f"{t}.attn.in_proj_bias",)
            table[f"{o}.attn.out"] = (f"{t}.attn.out_proj",)
            table[f"{o}.norm1"] = (f"{t}.ln_1",)
            table[f"{o}.mlp.fc1"] = (f"{t}.mlp.c_fc",)
            table[f"{o}.mlp.fc2"] = (f"{t}.mlp.c_proj",)
            table[f"{o}.norm2"] = (f"{t}.ln_2",)
            if layer.ls1 is not None:
                table[f"{o}.ls1"] = (f"{t}.ls_1",)
                table[f"{o}.ls2"] = (f"{t}.ls_2",)

    table["text.embeddings.word"] = ("token_embedding",)
    table["text.embeddings.position.weight"] = ("positional_embedding",)
    blocks("text.layers", "transformer.resblocks", model.text.layers)
    table["text.final_norm"] = ("ln_final",)
    table["logit_scale"] = ("logit_scale",)
    fixed: dict[str, torch.Tensor] = {}
    if "text_projection" in state:
        table["text_proj.weight"] = ("text_projection",)
    elif "text_projection.weight" in state:
        table["text_proj"] = ("text_projection",)
    else:  # proj_type 'none': the pooled text is the embedding
        fixed["text_proj.weight"] = torch.eye(*model.text_proj.weight.shape)
    if "visual.class_embedding" in state:
        table["vision.cls_token"] = ("visual.class_embedding",)
        table["vision.patch_embed"] = ("visual.conv1",)
        table["vision.pos_embed"] = ("visual.positional_embedding",)
        if model.vision.config.pre_norm:
            table["vision.norm_pre"] = ("visual.ln_pre",)
        blocks("vision.transformer.layers", "visual.transformer.resblocks", model.vision.transformer.layers)
        table["vision.norm"] = ("visual.ln_post",)
        if "visual.proj" in state:
            table["image_proj.weight"] = ("visual.proj",)
    else:
        table["vision"] = ("visual",)  # ModifiedResNet: vlp uses OpenCLIP's own names
    if "image_proj.weight" not in table:  # the attention pool (or a 'none' projection) is already the embedding
        fixed["image_proj.weight"] = torch.eye(*model.image_proj.weight.shape)
    if model.image_proj.bias is not None:  # vlp's projections share proj_bias; OpenCLIP's image side has none
        fixed["image_proj.bias"] = torch.zeros(model.image_proj.bias.shape)
    return StateMapping(table, fixed=fixed)


def _locate(path: Path, config: str | Path | OpenClipConfig | None) -> tuple[Path, OpenClipConfig | None]:
    """The weights file and the config of ``path`` (a file, or an OpenCLIP hub folder)."""
    if path.is_dir():
        weights, found = hub_files(path)
    elif path.is_file():
        # a hub-named file keeps its folder's config; a loose checkpoint has none
        weights = path
        found = path.parent / CONFIG_NAME if path.name in WEIGHT_NAMES else None
        found = found if found is not None and found.is_file() else None
    else:
        raise FileNotFoundError(f"{path}: no such OpenCLIP checkpoint file or hub folder")
    if isinstance(config, OpenClipConfig):
        return weights, config
    chosen = config if config is not None else found
    return weights, read_openclip_config(chosen) if chosen is not None else None


def _load(
    path: str | Path,
    act: str | None,
    overrides: dict[str, Any] | None,
    config: str | Path | OpenClipConfig | None,
) -> tuple[Any, Any, OpenClipConfig | None, list[str]]:
    """``(model, preprocess, config, vlp parameters set to fixed values)``."""
    path = Path(path)
    weights, cfg = _locate(path, config)
    state = read_openclip(weights)
    section = openclip_model_section(state, act, str(weights), cfg)
    section["name"] = model_name(path) if path.is_dir() else path.stem
    data = recipe_dict("clip" if section["vision"]["type"] == "patch" else "clip-resnet")
    data["model"] = section
    image = section["vision"]["image_size"]
    pre = preprocess_of(cfg, image if isinstance(image, int) else image[0])
    fit_data_section(data.setdefault("data", {}), section, pre)  # image pipeline; max_text_len <= context length
    model = build_model(data, overrides, str(weights))
    # OpenCLIP multiplies by (D, E) matrices; vlp's Linear layers hold (E, D)
    state = dict(state)
    for key in ("text_projection", "visual.proj"):
        if key in state:
            state[key] = state[key].t()
    mapping = openclip_mapping(model, state)
    import_state(model, state, mapping, str(weights))
    return model.eval(), pre, cfg, sorted(mapping.fixed)


def load_openclip(
    path: str | Path,
    act: str | None = None,
    overrides: dict[str, Any] | None = None,
    config: str | Path | OpenClipConfig | None = None,
) -> Any:
    """A vlp model (eval mode, recipe set) from an OpenCLIP state dict file or hub folder.

    ``config`` is an OpenCLIP config file (default: the hub folder's ``open_clip_config.json``);
    ``act`` (default: the config's ``quick_gelu``, else quick_gelu) may not contradict it.
    ``overrides`` are dotted recipe keys (``{"model.text.act": "gelu"}``)."""
    return _load(path, act, overrides, config)[0]


def import_openclip(
    path: str | Path,
    dst: str | Path,
    act: str | None = None,
    tokenizer: str | Path | None = None,
    overwrite: bool = False,
    config: str | Path | None = None,
) -> Path:
    """Convert an OpenCLIP state dict file or hub folder into the vlp folder ``dst``; ``tokenizer`` is a CLIP
    tokenizer folder (``vocab.json`` + ``merges.txt`` or ``tokenizer.json``) to store alongside (default: the
    hub folder's own tokenizer files, if it has them)."""
    model, pre, cfg, fixed = _load(path, act, None, config)
    path = Path(path)
    if tokenizer is None and path.is_dir() and any((path / n).is_file() for n in ("vocab.json", "tokenizer.json")):
        tokenizer = path
    tok = None
    if tokenizer is not None:
        tok = ClipTokenizer.load(tokenizer)
        if tok.vocab_size > model.cfg.text.vocab_size:
            raise ConversionError(
                f"{tokenizer}: tokenizer has {tok.vocab_size} tokens but the model's vocabulary is "
                f"{model.cfg.text.vocab_size}"
            )
    notes = {name: NOTES[name] for name in fixed}
    return save_pretrained(model, dst, tokenizer=_Extras(tok, pre, notes), overwrite=overwrite)


class _Extras:
    """Written into the model folder by ``save_pretrained``: the tokenizer (if any) and preprocess.json."""

    def __init__(self, tokenizer: Any, preprocess: Any, vlp_only: dict[str, str]) -> None:
        self.tokenizer, self.preprocess, self.vlp_only = tokenizer, preprocess, vlp_only

    def save(self, folder: Path) -> Path:
        if self.tokenizer is not None:
            self.tokenizer.save(folder)
        self.preprocess.save(folder)
        record = {"family": "clip", "architecture": "openclip", "vlp_only": self.vlp_only}
        (Path(folder) / "interop.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        return Path(folder)
