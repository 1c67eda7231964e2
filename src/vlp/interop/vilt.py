"""ViLT: transformers ``ViltModel`` (+ VQA, retrieval and MLM heads) <-> the vlp ``vilt`` recipe.

ViLT has no visual backbone: BERT text embeddings (word + position + token type, LayerNorm) and
linear patch embeddings ([CLS] + learned positions, no LayerNorm) each get a modality-type
embedding and are fused by one pre-norm transformer, followed by a LayerNorm and a dense+tanh
pooler on the first (text [CLS]) token. In vlp that is a ``bert`` text part with ``layers: 0``,
a ``patch`` part with ``layers: 0``, and ``single_stream`` fusion with ``norm_first: true``.

For images of another size than ``image_size`` ViLT resizes the position grid bilinearly with
``align_corners=True``; the vlp recipe sets ``pos_resize: bilinear_corners`` to do the same.
transformers shuffles the patch tokens (``torch.multinomial`` over all of them when
``max_image_length`` is -1): the fused text tokens and the pooled output do not depend on that
order, and vlp keeps the patches in raster order. vlp takes whole images (no ``pixel_mask``);
a ``max_image_length`` that drops patches at random has no vlp counterpart and is refused.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from vlp.config import family_name
from vlp.interop.clip import add_blocks
from vlp.interop.common import ACTS_BACK, Converter, StateMapping, Table, act_of, get, need

VILT_BLOCK = (
    ("attn.qkv", ("attention.attention.query", "attention.attention.key", "attention.attention.value")),
    ("attn.out", ("attention.output.dense",)),
    ("norm1", ("layernorm_before",)),
    ("mlp.fc1", ("intermediate.dense",)),
    ("mlp.fc2", ("output.dense",)),
    ("norm2", ("layernorm_after",)),
)
HEAD_OF = {"ViltForQuestionAnswering": "vqa", "ViltForImageAndTextRetrieval": "rank", "ViltForMaskedLM": "mlm"}


def bert_embeddings(table: Table, ours: str, theirs: str, segments: bool = True) -> None:
    """BERT-style ``word/position/token_type + LayerNorm`` embeddings -> vlp ``TextEmbeddings``."""
    table[f"{ours}.word"] = (f"{theirs}.word_embeddings",)
    table[f"{ours}.position"] = (f"{theirs}.position_embeddings",)
    if segments:
        table[f"{ours}.segment"] = (f"{theirs}.token_type_embeddings",)
    table[f"{ours}.norm"] = (f"{theirs}.LayerNorm",)


def num_labels(config: dict[str, Any]) -> int:
    labels = config.get("id2label")
    return len(labels) if isinstance(labels, dict) and labels else int(get(config, "num_labels", 2))


class ViltConverter(Converter):
    family = "vilt"
    recipe = "vilt"
    architectures = ("ViltModel", "ViltForQuestionAnswering", "ViltForImageAndTextRetrieval", "ViltForMaskedLM")
    model_types = ("vilt",)

    def model_section(self, config: dict[str, Any], architecture: str) -> dict[str, Any]:
        dim = int(get(config, "hidden_size", 768))
        heads = int(get(config, "num_attention_heads", 12))
        mlp = int(get(config, "intermediate_size", 3072))
        eps = float(get(config, "layer_norm_eps", 1e-12))
        act = act_of(config, "config")
        need(
            int(get(config, "modality_type_vocab_size", 2)) == 2,
            "ViLT with more than 2 modality types (NLVR2's two images) has no vlp counterpart",
        )
        need(bool(get(config, "qkv_bias", True)), "ViLT with qkv_bias: false has no vlp counterpart")
        need(
            int(get(config, "max_image_length", -1)) < 0,
            "ViLT with max_image_length > 0 samples patches at random; vlp uses every patch (set max_image_length: -1)",
        )
        need(int(dim * (mlp / dim)) == mlp, f"intermediate_size {mlp} / hidden_size {dim} is not an exact ratio")
        text = {
            "type": "bert",
            "vocab_size": int(get(config, "vocab_size", 30522)),
            "dim": dim,
            "layers": 0,
            "heads": heads,
            "mlp_dim": mlp,
            "max_positions": int(get(config, "max_position_embeddings", 40)),
            "type_vocab_size": int(get(config, "type_vocab_size", 2)),
            "dropout": 0.0,
            "eps": eps,
            "act": act,
        }
        vision = {
            "type": "patch",
            "image_size": int(get(config, "image_size", 384)),
            "patch_size": int(get(config, "patch_size", 32)),
            "in_channels": int(get(config, "num_channels", 3)),
            "dim": dim,
            "layers": 0,
            "heads": heads,
            "final_norm": False,
            "pos_resize": "bilinear_corners",
        }
        fusion = {
            "type": "single_stream",
            "dim": dim,
            "layers": int(get(config, "num_hidden_layers", 12)),
            "heads": heads,
            "mlp_ratio": mlp / dim,
            "norm_first": True,
            "act": act,
            "eps": eps,
            "dropout": 0.0,
        }
        heads_section: dict[str, Any] = {}
        head = HEAD_OF.get(architecture)
        if head == "vqa":
            heads_section["vqa"] = {"num_answers": num_labels(config), "hidden": 2 * dim}
        elif head == "rank":
            heads_section["rank"] = {}
        elif head == "mlm":
            heads_section["mlm"] = {"tie": True, "act": act, "eps": eps}
        return {"text": text, "vision": vision, "fusion": fusion, "heads": heads_section}

    def mapping(self, model: nn.Module, architecture: str) -> StateMapping:
        p = "" if architecture == "ViltModel" else "vilt."
        table: Table = {}
        bert_embeddings(table, "text.embeddings", f"{p}embeddings.text_embeddings")
        table["vision.cls_token"] = (f"{p}embeddings.cls_token",)
        table["vision.pos_embed"] = (f"{p}embeddings.position_embeddings",)
        table["vision.patch_embed"] = (f"{p}embeddings.patch_embeddings.projection",)
        table["fusion.modality"] = (f"{p}embeddings.token_type_embeddings",)
        add_blocks(table, "fusion.encoder.layers", f"{p}encoder.layer", model.fusion.cfg.layers, VILT_BLOCK)
        table["fusion.norm"] = (f"{p}layernorm",)
        table["fusion.pooler.dense"] = (f"{p}pooler.dense",)
        table["heads.vqa.0"] = ("classifier.0",)
        table["heads.vqa.1"] = ("classifier.1",)
        table["heads.vqa.3"] = ("classifier.3",)
        table["heads.rank"] = ("rank_output",)
        table["heads.mlm.dense"] = ("mlm_score.transform.dense",)
        table["heads.mlm.norm"] = ("mlm_score.transform.LayerNorm",)
        table["heads.mlm.decoder.weight"] = (f"{p}embeddings.text_embeddings.word_embeddings.weight",)
        table["heads.mlm.bias"] = ("mlm_score.decoder.bias",)
        return StateMapping(
            table, tied={"mlm_score.decoder.weight": f"{p}embeddings.text_embeddings.word_embeddings.weight"}
        )

    def matches(self, cfg: Any) -> bool:
        return (
            cfg.fusion is not None
            and family_name(cfg.fusion) == "single_stream"
            and cfg.vision is not None
            and family_name(cfg.vision) == "patch"
        )

    def architecture(self, cfg: Any) -> str:
        heads = sorted(cfg.heads)
        for arch, head in HEAD_OF.items():
            if heads == [head]:
                return arch
        need(not heads, f"model.heads {heads}: transformers' ViLT classes carry one of vqa, rank or mlm (or none)")
        return "ViltModel"

    def hf_config(self, cfg: Any, base: dict[str, Any], architecture: str) -> dict[str, Any]:
        t, v, f = cfg.text, cfg.vision, cfg.fusion
        need(t.layers == 0 and v.layers == 0, "ViLT's text and patch parts are embeddings only (layers: 0)")
        need(t.embed_norm and t.type_vocab_size > 0, "ViLT's text embeddings have token types and a LayerNorm")
        need(
            v.cls_token and v.patch_bias and not v.pre_norm and not v.final_norm and v.pos == "learned",
            "ViLT's patch embeddings: [CLS], patch bias, learned positions, no LayerNorm",
        )
        need(
            f.norm_first and f.modality_embeddings and not f.text_in_dim and not f.image_in_dim,
            "ViLT's fusion is pre-norm with modality embeddings and no input projections",
        )
        need(t.dim == v.dim == f.dim and t.eps == f.eps, "ViLT uses one width and one LayerNorm epsilon throughout")
        need(isinstance(v.image_size, int), f"ViltConfig needs a square image_size, got {v.image_size}")
        if "vqa" in cfg.heads:
            hidden = cfg.heads["vqa"].get("hidden", 0)
            need(
                hidden in (0, 2 * f.dim),
                f"ViLT's VQA classifier is {2 * f.dim} wide, model.heads.vqa.hidden is {hidden}",
            )
        out = dict(base)
        out.update(
            model_type="vilt",
            vocab_size=t.vocab_size,
            type_vocab_size=t.type_vocab_size,
            modality_type_vocab_size=2,
            max_position_embeddings=t.max_positions,
            hidden_size=f.dim,
            num_hidden_layers=f.layers,
            num_attention_heads=f.heads,
            intermediate_size=int(f.dim * f.mlp_ratio),
            hidden_act=ACTS_BACK[f.act],
            layer_norm_eps=f.eps,
            image_size=v.image_size,
            patch_size=v.patch_size,
            num_channels=v.in_channels,
            qkv_bias=True,
            max_image_length=-1,
        )
        if "vqa" in cfg.heads:
            answers = int(cfg.heads["vqa"]["num_answers"])
            labels = base.get("id2label") if isinstance(base.get("id2label"), dict) else None
            if not labels or len(labels) != answers:
                labels = {str(i): f"LABEL_{i}" for i in range(answers)}
            out["id2label"] = labels
            out["label2id"] = {name: int(i) for i, name in labels.items()}
        return out
