"""VisualBERT: transformers ``VisualBertModel`` <-> the vlp ``visualbert`` recipe.

VisualBERT is single-stream BERT over ``[text; regions]``: the text is BERT's embedding
(``LN(word + position + type)``), a region is ``LN(W f + b + visual_position[0] + visual_type[1])``
with the same LayerNorm, and post-norm BERT layers run over both, pooled at the text [CLS].

In vlp the text part is a ``bert`` with ``layers: 0``, the regions a ``region`` part with
``box_embedding: none`` (``LN(W f + b)``), the fusion ``single_stream`` with ``norm_first: false``
and no extra modality embeddings. Without ``image_text_alignment`` (which vlp does not model)
every region gets visual position 0 and visual token type 1, constant rows that are folded into
the projection bias on import. On export the folded bias is written back with zero
``visual_position_embeddings`` / ``visual_token_type_embeddings`` tables: the outputs are the
same, the unused rows of those tables are not restored. The two LayerNorms (text and region)
start as one; an export refuses copies that were trained apart.
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

VISUAL_POS = "embeddings.visual_position_embeddings.weight"
VISUAL_TYPE = "embeddings.visual_token_type_embeddings.weight"
VISUAL_BIAS = "embeddings.visual_projection.bias"


class VisualBertConverter(Converter):
    family = "visualbert"
    recipe = "visualbert"
    architectures = ("VisualBertModel",)
    model_types = ("visual_bert",)

    def model_section(self, config: dict[str, Any], architecture: str) -> dict[str, Any]:
        dim = int(get(config, "hidden_size", 768))
        heads = int(get(config, "num_attention_heads", 12))
        mlp = int(get(config, "intermediate_size", 3072))
        eps = float(get(config, "layer_norm_eps", 1e-12))
        act = act_of(config, "config")
        need(not get(config, "bypass_transformer", False), "VisualBERT with bypass_transformer has no vlp counterpart")
        need(int(dim * (mlp / dim)) == mlp, f"intermediate_size {mlp} / hidden_size {dim} is not an exact ratio")
        text = {
            "type": "bert",
            "vocab_size": int(get(config, "vocab_size", 30522)),
            "dim": dim,
            "layers": 0,
            "heads": heads,
            "mlp_dim": mlp,
            "max_positions": int(get(config, "max_position_embeddings", 512)),
            "type_vocab_size": int(get(config, "type_vocab_size", 2)),
            "dropout": 0.0,
            "eps": eps,
            "act": act,
        }
        vision = {
            "type": "region",
            "feature_dim": int(get(config, "visual_embedding_dim", 512)),
            "dim": dim,
            "layers": 0,
            "eps": eps,
            "dropout": 0.0,
            "box_embedding": "none",
        }
        fusion = {
            "type": "single_stream",
            "dim": dim,
            "layers": int(get(config, "num_hidden_layers", 12)),
            "heads": heads,
            "mlp_ratio": mlp / dim,
            "norm_first": False,
            "act": act,
            "eps": eps,
            "dropout": 0.0,
            "modality_embeddings": False,
        }
        return {"text": text, "vision": vision, "fusion": fusion}

    def prepare(self, state: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Fold the constant visual position (row 0) and token type (row 1) into the projection bias."""
        state = dict(state)
        if all(k in state for k in (VISUAL_POS, VISUAL_TYPE, VISUAL_BIAS)):
            pos, types = state.pop(VISUAL_POS), state.pop(VISUAL_TYPE)
            need(types.shape[0] > 1, f"{VISUAL_TYPE} has {types.shape[0]} rows; regions use row 1")
            state[VISUAL_BIAS] = state[VISUAL_BIAS] + pos[0] + types[1]
        return state

    def finish(self, state: dict[str, torch.Tensor], shapes: Mapping[str, torch.Size]) -> dict[str, torch.Tensor]:
        state = dict(state)
        for name in (VISUAL_POS, VISUAL_TYPE):
            state[name] = torch.zeros(shapes[name])  # the bias already holds the constant rows
        return state

    def mapping(self, model: nn.Module, architecture: str) -> StateMapping:
        table: Table = {}
        bert_embeddings(table, "text.embeddings", "embeddings")
        table["vision.feature_proj"] = ("embeddings.visual_projection",)
        table["vision.feature_norm"] = ("embeddings.LayerNorm",)  # VisualBERT's one embedding LayerNorm
        add_blocks(table, "fusion.encoder.layers", "encoder.layer", model.fusion.cfg.layers, BERT_BLOCK)
        table["fusion.pooler.dense"] = ("pooler.dense",)
        return StateMapping(table)

    def matches(self, cfg: Any) -> bool:
        return (
            cfg.fusion is not None
            and family_name(cfg.fusion) == "single_stream"
            and cfg.vision is not None
            and family_name(cfg.vision) == "region"
        )

    def architecture(self, cfg: Any) -> str:
        need(not cfg.heads, f"VisualBertModel has no task heads; model.heads {sorted(cfg.heads)} would be lost")
        return "VisualBertModel"

    def hf_config(self, cfg: Any, base: dict[str, Any], architecture: str) -> dict[str, Any]:
        t, v, f = cfg.text, cfg.vision, cfg.fusion
        need(t.layers == 0 and t.embed_norm and t.type_vocab_size > 1, "VisualBERT's text part is BERT embeddings")
        need(
            v.source == "features" and v.box_embedding == "none" and v.layers == 0,
            "VisualBERT's regions are projected features without boxes or own layers",
        )
        need(
            not f.norm_first and not f.modality_embeddings and not f.text_in_dim and not f.image_in_dim,
            "VisualBERT's fusion is post-norm BERT without extra modality embeddings or projections",
        )
        need(t.dim == v.dim == f.dim and t.eps == v.eps == f.eps, "VisualBERT uses one width and LayerNorm epsilon")
        out = dict(base)
        out.update(
            model_type="visual_bert",
            vocab_size=t.vocab_size,
            hidden_size=f.dim,
            visual_embedding_dim=v.feature_dim,
            num_hidden_layers=f.layers,
            num_attention_heads=f.heads,
            intermediate_size=int(f.dim * f.mlp_ratio),
            hidden_act=ACTS_BACK[f.act],
            max_position_embeddings=t.max_positions,
            type_vocab_size=t.type_vocab_size,
            layer_norm_eps=f.eps,
            bypass_transformer=False,
        )
        return out
