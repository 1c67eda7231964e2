"""BLIP: ``BlipForImageTextRetrieval`` and ``BlipForConditionalGeneration`` <-> the vlp ``blip`` recipe.

The image tower is a pre-norm ViT without ``ln_pre`` whose ``post_layernorm`` applies to every
token (vlp ``patch`` with ``pre_norm: false, final_norm: true``; BLIP's fused ``qkv`` is vlp's).
The text side is a BERT without token types whose every layer has cross-attention to the image
tokens (``cross_attention_from: 0``):

- retrieval: the ``text_cross`` fusion with ``restart: true``. Its dual side (``use_itm_head=False``
  in transformers) is the text stack run without the image, ``[CLS]`` through ``text_proj``; the
  ITM side re-runs the stack with the image as context and feeds ``[CLS]`` to ``heads.itm``.
  transformers' model compares normalized embeddings without a temperature; vlp's
  ``logit_scale`` has no counterpart and keeps its initial value ``log(1 / temperature)``.
- captioning: a causal ``decoder`` (no text encoder) with the ``lm`` head tied to its word
  embeddings (or not: ``tie_word_embeddings: false``); ``model.decode(ids, mask, image_tokens)``
  gives transformers' ``logits``. transformers' LM head holds two output biases,
  ``cls.predictions.bias`` and ``cls.predictions.decoder.bias``; its forward adds only the
  second (the ``decoder`` Linear's), the first is read only through tying. The import takes
  ``decoder.bias`` whenever the file has it (also when the two copies differ, which transformers
  then leaves untied), and the export writes vlp's one bias under both names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from vlp.config import family_name
from vlp.interop.bert import _LAYER_TABLE as BERT_BLOCK
from vlp.interop.clip import add_blocks
from vlp.interop.common import ACTS_BACK, Converter, StateMapping, Table, act_of, get, need
from vlp.interop.vilt import bert_embeddings

# the LM head's two output biases (see the module docstring): the one transformers' forward adds
# is DECODER_BIAS; vlp keeps one bias and reads / writes it under LM_BIAS
LM_BIAS = "text_decoder.cls.predictions.bias"
DECODER_BIAS = "text_decoder.cls.predictions.decoder.bias"

BLIP_VISION_BLOCK = (
    ("attn.qkv", ("self_attn.qkv",)),
    ("attn.out", ("self_attn.projection",)),
    ("norm1", ("layer_norm1",)),
    ("mlp.fc1", ("mlp.fc1",)),
    ("mlp.fc2", ("mlp.fc2",)),
    ("norm2", ("layer_norm2",)),
)


def _text(t: dict[str, Any], context_dim: int, causal: bool) -> dict[str, Any]:
    need(bool(get(t, "is_decoder", True)), "BLIP text_config.is_decoder: false builds no cross-attention layers")
    return {
        "type": "bert",
        "vocab_size": int(get(t, "vocab_size", 30524)),
        "dim": int(get(t, "hidden_size", 768)),
        "layers": int(get(t, "num_hidden_layers", 12)),
        "heads": int(get(t, "num_attention_heads", 8)),
        "mlp_dim": int(get(t, "intermediate_size", 3072)),
        "max_positions": int(get(t, "max_position_embeddings", 512)),
        "type_vocab_size": 0,
        "dropout": 0.0,
        "eps": float(get(t, "layer_norm_eps", 1e-12)),
        "act": act_of(t, "text_config"),
        "causal": causal,
        "pooling": "cls",
        "cross_attention_from": 0,
        "context_dim": context_dim,
    }


def _vision(v: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "patch",
        "image_size": int(get(v, "image_size", 384)),
        "patch_size": int(get(v, "patch_size", 16)),
        "dim": int(get(v, "hidden_size", 768)),
        "layers": int(get(v, "num_hidden_layers", 12)),
        "heads": int(get(v, "num_attention_heads", 12)),
        "mlp_dim": int(get(v, "intermediate_size", 3072)),
        "act": act_of(v, "vision_config"),
        "pre_norm": False,
        "final_norm": True,
        "patch_bias": True,
        "eps": float(get(v, "layer_norm_eps", 1e-5)),
        "pos_resize": "bicubic_plain",  # transformers' interpolate_pos_encoding: bicubic without antialias
    }


def _tied(config: dict[str, Any]) -> bool:
    return bool(get(config, "tie_word_embeddings", True)) and bool(
        get(get(config, "text_config", {}), "tie_word_embeddings", True)
    )


class BlipConverter(Converter):
    family = "blip"
    recipe = "blip"
    architectures = ("BlipForImageTextRetrieval", "BlipForConditionalGeneration")
    model_types = ("blip",)

    def model_section(self, config: dict[str, Any], architecture: str) -> dict[str, Any]:
        vision = _vision(get(config, "vision_config", {}))
        t = get(config, "text_config", {})
        if architecture == "BlipForConditionalGeneration":
            act = act_of(t, "text_config")
            lm = {"tie": _tied(config), "act": act, "eps": float(get(t, "layer_norm_eps", 1e-12))}
            return {"vision": vision, "decoder": _text(t, vision["dim"], causal=True), "heads": {"lm": lm}}
        return {
            "text": _text(t, vision["dim"], causal=False),
            "vision": vision,
            "fusion": {"type": "text_cross", "from_layer": 0, "restart": True, "pooler": False},
            "embed_dim": int(get(config, "image_text_hidden_size", 256)),
            "proj_bias": True,
            "image_pool": "first",
            "heads": {"itm": {}},
        }

    def mapping(self, model: nn.Module, architecture: str) -> StateMapping:
        table: Table = {}
        table["vision.cls_token"] = ("vision_model.embeddings.class_embedding",)
        table["vision.patch_embed"] = ("vision_model.embeddings.patch_embedding",)
        table["vision.pos_embed"] = ("vision_model.embeddings.position_embedding",)
        layers = model.vision.config.layers
        add_blocks(table, "vision.transformer.layers", "vision_model.encoder.layers", layers, BLIP_VISION_BLOCK)
        table["vision.norm"] = ("vision_model.post_layernorm",)
        if architecture == "BlipForConditionalGeneration":
            word = "text_decoder.bert.embeddings.word_embeddings.weight"
            bert_embeddings(table, "decoder.embeddings", "text_decoder.bert.embeddings", segments=False)
            add_blocks(
                table, "decoder.layers", "text_decoder.bert.encoder.layer", len(model.decoder.layers), BERT_BLOCK
            )
            table["heads.lm.dense"] = ("text_decoder.cls.predictions.transform.dense",)
            table["heads.lm.norm"] = ("text_decoder.cls.predictions.transform.LayerNorm",)
            tied = model.heads["lm"].decoder.weight is model.decoder.embeddings.word.weight
            table["heads.lm.decoder.weight"] = (word if tied else "text_decoder.cls.predictions.decoder.weight",)
            table["heads.lm.bias"] = (LM_BIAS,)  # prepare() has put the bias the forward adds there
            duplicates = {"text_decoder.cls.predictions.decoder.weight": word} if tied else {}
            return StateMapping(table, tied=duplicates)
        bert_embeddings(table, "text.embeddings", "text_encoder.embeddings", segments=False)
        add_blocks(table, "text.layers", "text_encoder.encoder.layer", len(model.text.layers), BERT_BLOCK)
        table["image_proj"] = ("vision_proj",)
        table["text_proj"] = ("text_proj",)
        table["heads.itm"] = ("itm_head",)
        return StateMapping(
            table, vlp_only={"logit_scale": "no temperature in BLIP's retrieval model; kept at log(1 / 0.07)"}
        )

    def prepare(self, state: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Keep the LM bias transformers' forward adds (``decoder.bias``) and drop the other copy, which
        it only reads through tying: a file whose two copies differ is loaded untied by transformers."""
        if DECODER_BIAS in state:
            state = dict(state)
            state[LM_BIAS] = state.pop(DECODER_BIAS)
        return state

    def finish(self, state: dict[str, torch.Tensor], shapes: Mapping[str, torch.Size]) -> dict[str, torch.Tensor]:
        """Write the one LM bias under both names: an untied model holds both as separate parameters."""
        if DECODER_BIAS in shapes and LM_BIAS in state and DECODER_BIAS not in state:
            state[DECODER_BIAS] = state[LM_BIAS].clone()
        return state

    def matches(self, cfg: Any) -> bool:
        if cfg.vision is None or family_name(cfg.vision) != "patch":
            return False
        captioner = cfg.decoder is not None and cfg.text is None and cfg.fusion is None
        retrieval = cfg.fusion is not None and family_name(cfg.fusion) == "text_cross" and cfg.fusion.restart
        return captioner or retrieval

    def architecture(self, cfg: Any) -> str:
        if cfg.decoder is not None and cfg.text is None:
            need(
                sorted(cfg.heads) in ([], ["lm"]),
                f"BlipForConditionalGeneration has only an lm head, not {sorted(cfg.heads)}",
            )
            return "BlipForConditionalGeneration"
        need(
            cfg.decoder is None,
            "a BLIP model with both a text encoder and a decoder has no single transformers "
            "class; BlipForImageTextRetrieval and BlipForConditionalGeneration are separate checkpoints",
        )
        need(
            sorted(cfg.heads) == ["itm"], f"BlipForImageTextRetrieval has exactly an itm head, not {sorted(cfg.heads)}"
        )
        return "BlipForImageTextRetrieval"

    def hf_config(self, cfg: Any, base: dict[str, Any], architecture: str) -> dict[str, Any]:
        v = cfg.vision
        t = cfg.decoder if architecture == "BlipForConditionalGeneration" else cfg.text
        need(
            not v.pre_norm and v.final_norm and v.patch_bias and v.cls_token and v.pos == "learned",
            "model.vision is not BLIP's ViT (no ln_pre, post LayerNorm, patch bias, [CLS], learned positions)",
        )
        need(isinstance(v.image_size, int) and v.in_channels == 3, "BLIP's ViT takes square RGB images")
        need(
            not t.norm_first and t.embed_norm and t.type_vocab_size == 0 and t.cross_attention_from == 0,
            "BLIP's text stack is post-norm BERT without token types, cross-attention in every layer",
        )
        need((t.context_dim or t.dim) == v.dim, "BLIP's cross-attention reads the ViT's tokens at their width")
        text = dict(get(base, "text_config", {}))
        text.update(
            vocab_size=t.vocab_size,
            hidden_size=t.dim,
            encoder_hidden_size=v.dim,
            intermediate_size=t.mlp_dim,
            num_hidden_layers=t.layers,
            num_attention_heads=t.heads,
            max_position_embeddings=t.max_positions,
            hidden_act=ACTS_BACK[t.act],
            layer_norm_eps=t.eps,
            is_decoder=True,
        )
        vision = dict(get(base, "vision_config", {}))
        vision.update(
            hidden_size=v.dim,
            intermediate_size=v.mlp_dim or 4 * v.dim,
            num_hidden_layers=v.layers,
            num_attention_heads=v.heads,
            image_size=v.image_size,
            patch_size=v.patch_size,
            hidden_act=ACTS_BACK[v.act],
            layer_norm_eps=v.eps,
        )
        out = {k: val for k, val in base.items() if k not in ("text_config", "vision_config")}
        out.update(model_type="blip", text_config=text, vision_config=vision)
        if architecture == "BlipForConditionalGeneration":
            tie = bool(cfg.heads.get("lm", {}).get("tie", True))
            out["tie_word_embeddings"] = tie
            text["tie_word_embeddings"] = tie
        else:
            out["image_text_hidden_size"] = cfg.embed_dim
        return out
