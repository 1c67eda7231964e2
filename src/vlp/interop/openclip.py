"""OpenCLIP / OpenAI CLIP state dicts -> the vlp ``clip`` (ViT) and ``clip-resnet`` (ModifiedResNet) recipes.

open_clip is not needed: the state dict is read from a ``.safetensors`` file or a ``.pt`` /
``.bin`` file with ``torch.load(weights_only=True)`` (a training checkpoint's ``state_dict``
entry and DDP's ``module.`` prefix are unwrapped; TorchScript archives are refused). The sizes
are read from the tensor shapes, as OpenAI's ``build_model`` does: widths from the embedding
tables, depths from the block indices, heads as ``width // 64``, the image size from the
position grid.

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
=============================================  ==========================================

The ModifiedResNet's attention pool already outputs the joint embedding; vlp's model always
has an ``image_proj``, which is set to the identity (no bias) and reported as such. Text is
pooled at the highest token id (CLIP's ``<|endoftext|>``), as OpenCLIP's ``argmax``.
OpenAI's models use QuickGELU (the default); most LAION-trained OpenCLIP models use GELU
(``act="gelu"``): the state dict does not say which.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from vlp.interop.common import ConversionError, StateMapping, Table, import_state, listing, read_weights

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


def openclip_model_section(state: Mapping[str, torch.Tensor], act: str = "quick_gelu", where: str = "") -> dict:
    """The ``model`` section of a vlp recipe for an OpenCLIP state dict (sizes from the shapes)."""
    _need(
        state,
        "token_embedding.weight",
        "positional_embedding",
        "ln_final.weight",
        "text_projection",
        "logit_scale",
        where=where,
    )
    width = state["ln_final.weight"].shape[0]
    vocab = state["token_embedding.weight"].shape[0]
    text = {
        "type": "bert",
        "vocab_size": vocab,
        "dim": width,
        "layers": _depth(state, "transformer.resblocks."),
        "heads": max(width // 64, 1),
        "mlp_dim": state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        "max_positions": state["positional_embedding"].shape[0],
        "type_vocab_size": 0,
        "dropout": 0.0,
        "eps": 1e-5,
        "act": act,
        "norm_first": True,
        "causal": True,
        "pooling": "eos",
        "eos_id": vocab - 1,  # OpenCLIP pools at argmax(ids): <|endoftext|> is the highest id
        "final_norm": True,
        "embed_norm": False,
    }
    embed_dim = state["text_projection"].shape[1]
    if "visual.proj" in state:
        _need(state, "visual.conv1.weight", "visual.class_embedding", "visual.positional_embedding", where=where)
        vision_width = state["visual.conv1.weight"].shape[0]
        patch = state["visual.conv1.weight"].shape[-1]
        grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        vision = {
            "type": "patch",
            "image_size": patch * grid,
            "patch_size": patch,
            "dim": vision_width,
            "layers": _depth(state, "visual.transformer.resblocks."),
            "heads": max(vision_width // 64, 1),
            "mlp_dim": state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            "act": act,
            "pre_norm": True,
            "final_norm": True,
            "patch_bias": False,
            "eps": 1e-5,
        }
    elif "visual.attnpool.positional_embedding" in state:
        layers = [_depth(state, f"visual.layer{i}.") for i in range(1, 5)]
        grid = round((state["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
        vision_width = state["visual.layer1.0.conv1.weight"].shape[0]
        vision = {
            "type": "resnet_clip",
            "image_size": grid * 32,
            "layers": layers,
            "width": vision_width,
            "heads": vision_width * 32 // 64,
            "dim": state["visual.attnpool.c_proj.weight"].shape[0],
        }
    else:
        raise ConversionError(
            f"{where}: no visual.proj (ViT) or visual.attnpool (ModifiedResNet): an image tower vlp does not know"
        )
    return {
        "name": "openclip",
        "text": text,
        "vision": vision,
        "fusion": {"type": "none"},
        "embed_dim": embed_dim,
        "proj_bias": False,
        "image_pool": "first",
    }


def openclip_mapping(model: Any, state: Mapping[str, torch.Tensor]) -> StateMapping:
    """vlp names -> OpenCLIP names (for a state dict whose projections were transposed to ``(E, D)``)."""
    table: Table = {}

    def blocks(ours: str, theirs: str, depth: int) -> None:
        for i in range(depth):
            o, t = f"{ours}.{i}", f"{theirs}.{i}"
            table[f"{o}.attn.qkv.weight"] = (f"{t}.attn.in_proj_weight",)
            table[f"{o}.attn.qkv.bias"] = (f"{t}.attn.in_proj_bias",)
            table[f"{o}.attn.out"] = (f"{t}.attn.out_proj",)
            table[f"{o}.norm1"] = (f"{t}.ln_1",)
            table[f"{o}.mlp.fc1"] = (f"{t}.mlp.c_fc",)
            table[f"{o}.mlp.fc2"] = (f"{t}.mlp.c_proj",)
            table[f"{o}.norm2"] = (f"{t}.ln_2",)

    table["text.embeddings.word"] = ("token_embedding",)
    table["text.embeddings.position.weight"] = ("positional_embedding",)
    blocks("text.layers", "transformer.resblocks", len(model.text.layers))
    table["text.final_norm"] = ("ln_final",)
    table["text_proj.weight"] = ("text_projection",)
    table["logit_scale"] = ("logit_scale",)
    fixed: dict[str, torch.Tensor] = {}
    if "visual.proj" in state:
        table["vision.cls_token"] = ("visual.class_embedding",)
        table["vision.patch_embed"] = ("visual.conv1",)
        table["vision.pos_embed"] = ("visual.positional_embedding",)
        table["vision.norm_pre"] = ("visual.ln_pre",)
        blocks("vision.transformer.layers", "visual.transformer.resblocks", model.vision.config.layers)
        table["vision.norm"] = ("visual.ln_post",)
        table["image_proj.weight"] = ("visual.proj",)
    else:
        table["vision"] = ("visual",)  # ModifiedResNet: vlp uses OpenCLIP's own names
        fixed["image_proj.weight"] = torch.eye(model.image_proj.weight.shape[0], model.image_proj.weight.shape[1])
    return StateMapping(table, fixed=fixed)


def load_openclip(path: str | Path, act: str = "quick_gelu", overrides: dict[str, Any] | None = None) -> Any:
    """A vlp model (eval mode, recipe set) from an OpenCLIP state dict file; ``overrides`` are dotted recipe
    keys (``{"model.text.act": "gelu"}`` is the same as ``act="gelu"`` for both towers' text side)."""
    from vlp.interop.hf import _build
    from vlp.recipe import recipe_dict

    path = Path(path)
    state = read_openclip(path)
    section = openclip_model_section(state, act, str(path))
    section["name"] = path.stem
    data = recipe_dict("clip" if section["vision"]["type"] == "patch" else "clip-resnet")
    data["model"] = section
    image = section["vision"]["image_size"]
    data.setdefault("data", {})["image_size"] = image
    model = _build(data, overrides, str(path))
    # OpenCLIP multiplies by (D, E) matrices; vlp's Linear layers hold (E, D)
    state = dict(state)
    for key in ("text_projection", "visual.proj"):
        if key in state:
            state[key] = state[key].t()
    import_state(model, state, openclip_mapping(model, state), str(path))
    return model.eval()


def import_openclip(
    path: str | Path,
    dst: str | Path,
    act: str = "quick_gelu",
    tokenizer: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert an OpenCLIP state dict file into the vlp folder ``dst``; ``tokenizer`` is a CLIP tokenizer
    folder (``vocab.json`` + ``merges.txt`` or ``tokenizer.json``) to store alongside, if given."""
    from vlp.interop.preprocess import Preprocess
    from vlp.models.saving import save_pretrained

    model = load_openclip(path, act)
    tok = None
    if tokenizer is not None:
        from vlp.text.bpe import ClipTokenizer

        tok = ClipTokenizer.load(tokenizer)
        if tok.vocab_size > model.cfg.text.vocab_size:
            raise ConversionError(
                f"{tokenizer}: tokenizer has {tok.vocab_size} tokens but the model's vocabulary is "
                f"{model.cfg.text.vocab_size}"
            )
    size = model.recipe.data.image_size
    # OpenCLIP's eval transform: bicubic resize of the shorter side, centre crop, OpenAI's mean / std
    pre = Preprocess("shortest_edge", (size, size), (size, size), "bicubic")
    notes = {}
    if model.cfg.vision.type == "resnet_clip":
        notes["image_proj.weight"] = "identity: OpenCLIP's attention pool already outputs the joint embedding"
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
