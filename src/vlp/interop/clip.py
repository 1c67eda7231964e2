"""CLIP: transformers ``CLIPModel`` <-> the vlp ``clip`` recipe (a dual encoder, fusion ``none``).

Structure (both sides): a pre-norm ViT with ``pre_layrnorm`` (vlp ``norm_pre``), no patch bias,
a class embedding and learned positions; a causal pre-norm text transformer without token
types or embedding LayerNorm, with a final LayerNorm, pooled at the end-of-text token; and
bias-free projections into the joint space, plus ``logit_scale``.

Two details differ without changing any output the models share:

- transformers applies ``post_layernorm`` to the pooled [CLS] only; vlp's ``norm`` applies it to
  every visual token (the [CLS] row, which CLIP projects, is the same).
- text pooling: configs with the legacy ``eos_token_id: 2`` pool at ``argmax(input_ids)`` (the
  end-of-text token is the highest id of CLIP's original vocabulary), and so does vlp
  (``pooling: argmax``), also when the vocabulary was resized past <|endoftext|>; any other
  ``eos_token_id`` is pooled at its first occurrence (``pooling: eos``).
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from vlp.config import family_name
from vlp.interop.common import (
    ACTS_BACK,
    Converter,
    StateMapping,
    Table,
    act_of,
    get,
    need,
)

# CLIP attention / MLP sublayers: vlp TransformerBlock name -> CLIPEncoderLayer names
CLIP_BLOCK = (
    ("attn.qkv", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    ("attn.out", ("self_attn.out_proj",)),
    ("norm1", ("layer_norm1",)),
    ("mlp.fc1", ("mlp.fc1",)),
    ("mlp.fc2", ("mlp.fc2",)),
    ("norm2", ("layer_norm2",)),
)


def add_blocks(table: Table, ours: str, theirs: str, layers: int, names=CLIP_BLOCK) -> None:
    """Map ``layers`` blocks ``{ours}.{i}.*`` to ``{theirs}.{i}.*`` by the sublayer ``names``."""
    for i in range(layers):
        for mine, sources in names:
            table[f"{ours}.{i}.{mine}"] = tuple(f"{theirs}.{i}.{s}" for s in sources)


def text_section(t: dict[str, Any], where: str = "text_config") -> dict[str, Any]:
    """``CLIPTextConfig`` -> vlp ``bert`` text section in CLIP's layout."""
    vocab = int(get(t, "vocab_size", 49408))
    eos = int(get(t, "eos_token_id", 49407))
    return {
        "type": "bert",
        "vocab_size": vocab,
        "dim": int(get(t, "hidden_size", 512)),
        "layers": int(get(t, "num_hidden_layers", 12)),
        "heads": int(get(t, "num_attention_heads", 8)),
        "mlp_dim": int(get(t, "intermediate_size", 2048)),
        "max_positions": int(get(t, "max_position_embeddings", 77)),
        "type_vocab_size": 0,
        "dropout": 0.0,
        "attn_dropout": float(get(t, "attention_dropout", 0.0)),
        "eps": float(get(t, "layer_norm_eps", 1e-5)),
        "act": act_of(t, where, "quick_gelu"),
        "norm_first": True,
        "causal": True,
        # legacy configs (eos_token_id 2) pool at argmax(input_ids), whatever the vocabulary size; transformers
        # keeps that rule for old checkpoints, so pooling at a fixed id would differ once tokens are added
        "pooling": "argmax" if eos == 2 else "eos",
        "eos_id": -1 if eos == 2 else eos,
        "final_norm": True,
        "embed_norm": False,
    }


def vision_section(v: dict[str, Any], where: str = "vision_config") -> dict[str, Any]:
    """``CLIPVisionConfig`` -> vlp ``patch`` section in CLIP's layout."""
    return {
        "type": "patch",
        "image_size": int(get(v, "image_size", 224)),
        "patch_size": int(get(v, "patch_size", 32)),
        "in_channels": int(get(v, "num_channels", 3)),
        "dim": int(get(v, "hidden_size", 768)),
        "layers": int(get(v, "num_hidden_layers", 12)),
        "heads": int(get(v, "num_attention_heads", 12)),
        "mlp_dim": int(get(v, "intermediate_size", 3072)),
        "act": act_of(v, where, "quick_gelu"),
        "pre_norm": True,
        "final_norm": True,
        "patch_bias": False,
        "eps": float(get(v, "layer_norm_eps", 1e-5)),
        "attn_dropout": float(get(v, "attention_dropout", 0.0)),
        # transformers' interpolate_pos_encoding (other image sizes): bicubic without antialias
        "pos_resize": "bicubic_plain",
    }


def hf_text_fields(t: Any) -> dict[str, Any]:
    """transformers' text-tower config fields of a vlp ``BertTextConfig`` (CLIP-style towers)."""
    return {
        "vocab_size": t.vocab_size,
        "hidden_size": t.dim,
        "intermediate_size": t.mlp_dim,
        "num_hidden_layers": t.layers,
        "num_attention_heads": t.heads,
        "max_position_embeddings": t.max_positions,
        "hidden_act": ACTS_BACK[t.act],
        "layer_norm_eps": t.eps,
        "attention_dropout": t.attn_dropout or 0.0,
    }


def hf_vision_fields(v: Any) -> dict[str, Any]:
    """transformers' ViT config fields of a vlp ``PatchConfig`` (CLIP-style towers)."""
    return {
        "image_size": v.image_size,
        "patch_size": v.patch_size,
        "num_channels": v.in_channels,
        "hidden_size": v.dim,
        "intermediate_size": v.mlp_dim or 4 * v.dim,
        "num_hidden_layers": v.layers,
        "num_attention_heads": v.heads,
        "hidden_act": ACTS_BACK[v.act],
        "layer_norm_eps": v.eps,
        "attention_dropout": v.attn_dropout,
    }


def text_table(table: Table, ours: str, theirs: str, layers: int) -> None:
    """CLIP text tower names (``theirs`` = ``text_model`` or ``""``)."""
    p = f"{theirs}." if theirs else ""
    table[f"{ours}.embeddings.word"] = (f"{p}embeddings.token_embedding",)
    table[f"{ours}.embeddings.position"] = (f"{p}embeddings.position_embedding",)
    add_blocks(table, f"{ours}.layers", f"{p}encoder.layers", layers)
    table[f"{ours}.final_norm"] = (f"{p}final_layer_norm",)


def vision_table(table: Table, ours: str, theirs: str, layers: int) -> None:
    p = f"{theirs}." if theirs else ""
    table[f"{ours}.cls_token"] = (f"{p}embeddings.class_embedding",)
    table[f"{ours}.patch_embed"] = (f"{p}embeddings.patch_embedding",)
    table[f"{ours}.pos_embed"] = (f"{p}embeddings.position_embedding.weight",)
    table[f"{ours}.norm_pre"] = (f"{p}pre_layrnorm",)
    add_blocks(table, f"{ours}.transformer.layers", f"{p}encoder.layers", layers)
    table[f"{ours}.norm"] = (f"{p}post_layernorm",)


class ClipConverter(Converter):
    family = "clip"
    recipe = "clip"
    architectures = ("CLIPModel",)
    model_types = ("clip",)

    def model_section(self, config: dict[str, Any], architecture: str) -> dict[str, Any]:
        text = text_section(get(config, "text_config", {}))
        vision = vision_section(get(config, "vision_config", {}))
        return {
            "text": text,
            "vision": vision,
            "fusion": {"type": "none"},
            "embed_dim": int(get(config, "projection_dim", 512)),
            "proj_bias": False,
            "image_pool": "first",
        }

    def mapping(self, model: nn.Module, architecture: str) -> StateMapping:
        table: Table = {}
        text_table(table, "text", "text_model", len(model.text.layers))
        vision_table(table, "vision", "vision_model", model.vision.config.layers)
        table["text_proj"] = ("text_projection",)
        table["image_proj"] = ("visual_projection",)
        table["logit_scale"] = ("logit_scale",)
        return StateMapping(table)

    def matches(self, cfg: Any) -> bool:
        return (
            cfg.fusion is not None
            and family_name(cfg.fusion) == "none"
            and cfg.text is not None
            and cfg.vision is not None
            and cfg.embed_dim > 0
        )

    def architecture(self, cfg: Any) -> str:
        return "CLIPModel"

    def hf_config(self, cfg: Any, base: dict[str, Any], architecture: str) -> dict[str, Any]:
        t, v = cfg.text, cfg.vision
        need(family_name(v) == "patch", "only a ViT image tower exports to transformers' CLIPModel (no ResNet class)")
        need(
            t.norm_first and t.causal and t.final_norm and not t.embed_norm and t.type_vocab_size == 0,
            "model.text is not a CLIP text tower (needs norm_first, causal, final_norm, no embed_norm, no token types)",
        )
        need(
            t.pooling == "argmax" or (t.pooling == "eos" and t.eos_id >= 0),
            "model.text.pooling must be argmax, or eos with an explicit eos_id, for CLIP",
        )
        need(
            t.pooling == "argmax" or t.eos_id != 2,
            "model.text.eos_id 2 would be read by transformers as its legacy argmax pooling",
        )
        need(
            v.pre_norm and v.final_norm and not v.patch_bias and v.cls_token and v.pos == "learned",
            "model.vision is not a CLIP ViT (needs pre_norm, final_norm, no patch bias, [CLS], learned positions)",
        )
        need(not cfg.proj_bias and cfg.image_pool in ("auto", "first"), "CLIP projections have no bias and pool [CLS]")
        need(isinstance(v.image_size, int), f"CLIPModel needs a square image_size, got {v.image_size}")
        text = dict(get(base, "text_config", {}))
        text.update(
            **hf_text_fields(t),
            eos_token_id=2 if t.pooling == "argmax" else t.eos_id,  # 2: transformers' legacy argmax pooling
            projection_dim=cfg.embed_dim,
        )
        vision = dict(get(base, "vision_config", {}))
        vision.update(**hf_vision_fields(v), projection_dim=cfg.embed_dim)
        out = {k: val for k, val in base.items() if k not in ("text_config", "vision_config")}
        out.update(model_type="clip", text_config=text, vision_config=vision, projection_dim=cfg.embed_dim)
        return out
