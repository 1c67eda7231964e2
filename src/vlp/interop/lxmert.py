"""LXMERT: transformers ``LxmertModel`` <-> the vlp ``lxmert`` recipe.

LXMERT's three encoders map onto vlp parts: the language encoder (``l_layers`` BERT layers) is
the ``bert`` text part; the object encoder (``r_layers`` BERT layers over region tokens) is the
``region`` part's transformer, whose input embedding is ``(LN(W_f f) + LN(W_b box)) / 2`` with the
plain normalized ``(x1, y1, x2, y2)`` box (``box_embedding: xyxy, combine: mean``); and the
``x_layers`` cross-modality layers are ``co_attention`` fusion with ``order: cross_first``,
post-norm, and one cross-attention sublayer shared by both directions
(``shared_cross_attention: true``, as LXMERT's ``visual_attention``). ``pooled`` is the dense+tanh
pooler on the language [CLS].
"""

from __future__ import annotations

from typing import Any

from torch import nn

from vlp.config import family_name
from vlp.interop.bert import _LAYER_TABLE as BERT_BLOCK
from vlp.interop.clip import add_blocks
from vlp.interop.common import ACTS_BACK, Converter, StateMapping, Table, act_of, get, need
from vlp.interop.vilt import bert_embeddings

EPS = 1e-12  # LXMERT hard-codes its LayerNorm epsilon


def _stream_table(table: Table, ours: str, theirs: str, side: str) -> None:
    """One stream of a cross-modality layer; ``side`` is ``lang`` or ``visn``."""
    table[f"{ours}.self_attn.qkv"] = tuple(f"{theirs}.{side}_self_att.self.{n}" for n in ("query", "key", "value"))
    table[f"{ours}.self_attn.out"] = (f"{theirs}.{side}_self_att.output.dense",)
    table[f"{ours}.self_norm"] = (f"{theirs}.{side}_self_att.output.LayerNorm",)
    table[f"{ours}.cross_attn.q"] = (f"{theirs}.visual_attention.att.query",)
    table[f"{ours}.cross_attn.kv"] = (f"{theirs}.visual_attention.att.key", f"{theirs}.visual_attention.att.value")
    table[f"{ours}.cross_attn.out"] = (f"{theirs}.visual_attention.output.dense",)
    table[f"{ours}.cross_norm"] = (f"{theirs}.visual_attention.output.LayerNorm",)
    table[f"{ours}.mlp.fc1"] = (f"{theirs}.{side}_inter.dense",)
    table[f"{ours}.mlp.fc2"] = (f"{theirs}.{side}_output.dense",)
    table[f"{ours}.mlp_norm"] = (f"{theirs}.{side}_output.LayerNorm",)


class LxmertConverter(Converter):
    family = "lxmert"
    recipe = "lxmert"
    architectures = ("LxmertModel",)
    model_types = ("lxmert",)

    def model_section(self, config: dict[str, Any], architecture: str) -> dict[str, Any]:
        dim = int(get(config, "hidden_size", 768))
        heads = int(get(config, "num_attention_heads", 12))
        mlp = int(get(config, "intermediate_size", 3072))
        act = act_of(config, "config")
        need(int(get(config, "visual_pos_dim", 4)) == 4, "LXMERT with visual_pos_dim != 4 has no vlp counterpart")
        need(int(dim * (mlp / dim)) == mlp, f"intermediate_size {mlp} / hidden_size {dim} is not an exact ratio")
        text = {
            "type": "bert",
            "vocab_size": int(get(config, "vocab_size", 30522)),
            "dim": dim,
            "layers": int(get(config, "l_layers", 9)),
            "heads": heads,
            "mlp_dim": mlp,
            "max_positions": int(get(config, "max_position_embeddings", 512)),
            "type_vocab_size": int(get(config, "type_vocab_size", 2)),
            "dropout": 0.0,
            "eps": EPS,
            "act": act,
        }
        vision = {
            "type": "region",
            "feature_dim": int(get(config, "visual_feat_dim", 2048)),
            "dim": dim,
            "layers": int(get(config, "r_layers", 5)),
            "heads": heads,
            "mlp_dim": mlp,
            "act": act,
            "norm_first": False,
            "eps": EPS,
            "dropout": 0.0,
            "box_embedding": "xyxy",
            "combine": "mean",
        }
        fusion = {
            "type": "co_attention",
            "text_dim": dim,
            "layers": int(get(config, "x_layers", 5)),
            "heads": heads,
            "mlp_ratio": mlp / dim,
            "order": "cross_first",
            "pooling": "text",
            "norm_first": False,
            "act": act,
            "eps": EPS,
            "shared_cross_attention": True,
        }
        return {"text": text, "vision": vision, "fusion": fusion}

    def mapping(self, model: nn.Module, architecture: str) -> StateMapping:
        table: Table = {}
        bert_embeddings(table, "text.embeddings", "embeddings")
        add_blocks(table, "text.layers", "encoder.layer", len(model.text.layers), BERT_BLOCK)
        table["vision.feature_proj"] = ("encoder.visn_fc.visn_fc",)
        table["vision.feature_norm"] = ("encoder.visn_fc.visn_layer_norm",)
        table["vision.box_proj"] = ("encoder.visn_fc.box_fc",)
        table["vision.box_norm"] = ("encoder.visn_fc.box_layer_norm",)
        add_blocks(table, "vision.transformer.layers", "encoder.r_layers", model.vision.config.layers, BERT_BLOCK)
        for i in range(len(model.fusion.layers)):
            _stream_table(table, f"fusion.layers.{i}.text", f"encoder.x_layers.{i}", "lang")
            _stream_table(table, f"fusion.layers.{i}.image", f"encoder.x_layers.{i}", "visn")
        table["fusion.text_pooler.dense"] = ("pooler.dense",)
        return StateMapping(table)

    def matches(self, cfg: Any) -> bool:
        return (
            cfg.fusion is not None
            and family_name(cfg.fusion) == "co_attention"
            and cfg.vision is not None
            and family_name(cfg.vision) == "region"
        )

    def architecture(self, cfg: Any) -> str:
        need(not cfg.heads, f"LxmertModel has no task heads; model.heads {sorted(cfg.heads)} would be lost")
        return "LxmertModel"

    def hf_config(self, cfg: Any, base: dict[str, Any], architecture: str) -> dict[str, Any]:
        t, v, f = cfg.text, cfg.vision, cfg.fusion
        need(
            not t.norm_first and t.embed_norm and t.type_vocab_size > 0 and t.eps == EPS,
            "LXMERT's language encoder is post-norm BERT (token types, LayerNorm eps 1e-12)",
        )
        need(
            v.source == "features" and v.box_embedding == "xyxy" and v.combine == "mean" and not v.norm_first,
            "LXMERT's object encoder: precomputed features, xyxy boxes averaged in, post-norm layers",
        )
        need(
            f.order == "cross_first" and f.pooling == "text" and not f.norm_first and f.shared_cross_attention,
            "LXMERT's cross-modality layers: cross first, post-norm, one shared cross-attention, text pooler",
        )
        need(
            t.dim == v.dim == f.text_dim and (f.image_dim or f.text_dim) == t.dim,
            "LXMERT uses one width for every encoder",
        )
        need(not f.text_in_dim and not f.image_in_dim, "LXMERT has no fusion input projections")
        need(t.mlp_dim == (v.mlp_dim or 4 * v.dim) == int(f.text_dim * f.mlp_ratio), "LXMERT uses one FFN width")
        need(t.act == v.act == f.act and t.heads == v.heads == f.heads, "LXMERT uses one activation and head count")
        out = dict(base)
        out.update(
            model_type="lxmert",
            vocab_size=t.vocab_size,
            hidden_size=t.dim,
            num_attention_heads=t.heads,
            intermediate_size=t.mlp_dim,
            hidden_act=ACTS_BACK[t.act],
            max_position_embeddings=t.max_positions,
            type_vocab_size=t.type_vocab_size,
            l_layers=t.layers,
            x_layers=f.layers,
            r_layers=v.layers,
            visual_feat_dim=v.feature_dim,
            visual_pos_dim=4,
        )
        out.pop("num_hidden_layers", None)  # derived by LxmertConfig from the three counts
        return out
