"""SigLIP: transformers ``SiglipModel`` <-> the vlp ``siglip`` recipe (a dual encoder, fusion ``none``).

Structure: a pre-norm ViT with a patch bias, no [CLS] and no ``pre_layrnorm``, learned positions,
``post_layernorm`` on every token, pooled by a multihead-attention head (``vision_model.head`` ->
vlp ``image_pool_head``, ``model.image_pool: map``) whose output *is* the image embedding; a
bidirectional pre-norm text transformer with a final LayerNorm, pooled at the last position
whatever the padding (vlp ``pooling: last``) and projected by ``text_model.head`` (with bias);
``logit_scale`` and ``logit_bias`` (vlp ``model.logit_bias: true``).

vlp keeps an image projection on every dual encoder; an imported one is set to the identity (with
zero bias), and a model whose ``image_proj`` is not the identity is refused on export (SiglipModel
has nowhere to put it: the head's LayerNorm reads the unprojected residual). SigLIP's SentencePiece
tokenizer (``spiece.model``) is not read by vlp; tokenize with transformers and pass the ids.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from vlp.config import family_name
from vlp.interop.clip import add_blocks, hf_text_fields, hf_vision_fields
from vlp.interop.common import ConversionError, Converter, StateMapping, Table, act_of, get, need


def text_section(t: dict[str, Any], where: str = "text_config") -> dict[str, Any]:
    """``SiglipTextConfig`` -> vlp ``bert`` text section in SigLIP's layout."""
    return {
        "type": "bert",
        "vocab_size": int(get(t, "vocab_size", 32000)),
        "dim": int(get(t, "hidden_size", 768)),
        "layers": int(get(t, "num_hidden_layers", 12)),
        "heads": int(get(t, "num_attention_heads", 12)),
        "mlp_dim": int(get(t, "intermediate_size", 3072)),
        "max_positions": int(get(t, "max_position_embeddings", 64)),
        "type_vocab_size": 0,
        "dropout": 0.0,
        "attn_dropout": float(get(t, "attention_dropout", 0.0)),
        "eps": float(get(t, "layer_norm_eps", 1e-6)),
        "act": act_of(t, where, "gelu_pytorch_tanh"),
        "norm_first": True,
        "causal": False,  # unlike CLIP, SigLIP's text attention is bidirectional
        "pooling": "last",
        "final_norm": True,
        "embed_norm": False,
    }


def vision_section(v: dict[str, Any], where: str = "vision_config") -> dict[str, Any]:
    """``SiglipVisionConfig`` -> vlp ``patch`` section in SigLIP's layout."""
    need(
        get(v, "vision_use_head", True),
        f"{where}.vision_use_head=false: without its attention-pooling head SiglipModel has no image embedding",
    )
    return {
        "type": "patch",
        "image_size": int(get(v, "image_size", 224)),
        "patch_size": int(get(v, "patch_size", 16)),
        "in_channels": int(get(v, "num_channels", 3)),
        "dim": int(get(v, "hidden_size", 768)),
        "layers": int(get(v, "num_hidden_layers", 12)),
        "heads": int(get(v, "num_attention_heads", 12)),
        "mlp_dim": int(get(v, "intermediate_size", 3072)),
        "act": act_of(v, where, "gelu_pytorch_tanh"),
        "cls_token": False,
        "pre_norm": False,
        "final_norm": True,
        "patch_bias": True,
        "eps": float(get(v, "layer_norm_eps", 1e-6)),
        "attn_dropout": float(get(v, "attention_dropout", 0.0)),
        "pos_resize": "bicubic_plain",  # transformers' interpolate_pos_encoding: bicubic without antialias
    }


class SiglipConverter(Converter):
    family = "siglip"
    recipe = "siglip"
    architectures = ("SiglipModel",)
    model_types = ("siglip",)

    def model_section(self, config: dict[str, Any], architecture: str) -> dict[str, Any]:
        t, v = get(config, "text_config", {}), get(config, "vision_config", {})
        text, vision = text_section(t), vision_section(v)
        embed_dim = int(get(t, "projection_size", text["dim"]))
        need(
            embed_dim == vision["dim"],
            f"text_config.projection_size={embed_dim} differs from vision_config.hidden_size={vision['dim']}: "
            "SiglipModel compares the text head's output with the pooled image directly",
        )
        return {
            "text": text,
            "vision": vision,
            "fusion": {"type": "none"},
            "embed_dim": embed_dim,
            "proj_bias": True,  # the text head has a bias; the image projection is a fixed identity
            "image_pool": "map",
            "logit_bias": True,
        }

    def mapping(self, model: nn.Module, architecture: str) -> StateMapping:
        table: Table = {}
        table["text.embeddings.word"] = ("text_model.embeddings.token_embedding",)
        table["text.embeddings.position"] = ("text_model.embeddings.position_embedding",)
        add_blocks(table, "text.layers", "text_model.encoder.layers", len(model.text.layers))
        table["text.final_norm"] = ("text_model.final_layer_norm",)
        table["text_proj"] = ("text_model.head",)
        v = "vision_model"
        table["vision.patch_embed"] = (f"{v}.embeddings.patch_embedding",)
        table["vision.pos_embed"] = (f"{v}.embeddings.position_embedding.weight",)
        add_blocks(table, "vision.transformer.layers", f"{v}.encoder.layers", model.vision.config.layers)
        table["vision.norm"] = (f"{v}.post_layernorm",)
        for name in ("probe", "attention", "layernorm", "mlp"):
            table[f"image_pool_head.{name}"] = (f"{v}.head.{name}",)
        table["logit_scale"] = ("logit_scale",)
        table["logit_bias"] = ("logit_bias",)
        fixed = {"image_proj.weight": torch.eye(*model.image_proj.weight.shape)}
        if model.image_proj.bias is not None:
            fixed["image_proj.bias"] = torch.zeros(model.image_proj.bias.shape)
        return StateMapping(table, fixed=fixed)

    def check_export(self, model: nn.Module) -> None:
        proj = model.image_proj
        identity = proj.weight.shape[0] == proj.weight.shape[1] and torch.equal(
            proj.weight.detach().cpu(), torch.eye(proj.weight.shape[0], dtype=proj.weight.dtype)
        )
        if not identity or (proj.bias is not None and bool(proj.bias.detach().any())):
            raise ConversionError(
                "image_proj is not the identity: SiglipModel has no image projection (the pooled image is the "
                "embedding), so a model whose image_proj was trained cannot be exported to it faithfully"
            )

    def matches(self, cfg: Any) -> bool:
        return (
            cfg.fusion is not None
            and family_name(cfg.fusion) == "none"
            and cfg.embed_dim > 0
            and bool(getattr(cfg, "logit_bias", False))
            and cfg.image_pool == "map"
        )

    def architecture(self, cfg: Any) -> str:
        return "SiglipModel"

    def hf_config(self, cfg: Any, base: dict[str, Any], architecture: str) -> dict[str, Any]:
        t, v = cfg.text, cfg.vision
        need(family_name(v) == "patch", "model.vision: only a ViT image tower exports to SiglipModel")
        need(
            t.norm_first and not t.causal and t.final_norm and not t.embed_norm and t.type_vocab_size == 0,
            "model.text is not a SigLIP text tower (needs norm_first, causal: false, final_norm, no embed_norm, "
            "type_vocab_size: 0)",
        )
        need(t.pooling == "last", f"model.text.pooling={t.pooling!r}: SiglipModel pools the last position (last)")
        need(t.layer_scale is None and v.layer_scale is None, "model.*.layer_scale: SiglipModel has no layer scale")
        need(
            not v.cls_token and not v.pre_norm and v.final_norm and v.patch_bias and v.pos == "learned",
            "model.vision is not a SigLIP ViT (needs cls_token: false, pre_norm: false, final_norm, patch_bias, "
            "learned positions)",
        )
        need(not v.conv_stem, "model.vision.conv_stem: SiglipModel's patch embedding is a single conv")
        need(isinstance(v.image_size, int), f"SiglipModel needs a square image_size, got {v.image_size}")
        need(cfg.image_pool == "map" and cfg.logit_bias, "SiglipModel needs model.image_pool: map and logit_bias: true")
        need(cfg.proj_bias, "model.proj_bias: false: SiglipModel's text head has a bias")
        need(cfg.embed_dim == v.dim, f"model.embed_dim={cfg.embed_dim} must equal model.vision.dim={v.dim}")
        text = dict(get(base, "text_config", {}))
        text.update(**hf_text_fields(t), projection_size=cfg.embed_dim)
        vision = dict(get(base, "vision_config", {}))
        vision.update(**hf_vision_fields(v), vision_use_head=True)
        out = {k: val for k, val in base.items() if k not in ("text_config", "vision_config")}
        out.update(model_type="siglip", text_config=text, vision_config=vision)
        return out
