"""BERT weights from and to transformers' naming.

A transformers ``BertModel`` checkpoint (``model.safetensors``, a sharded
``model.safetensors.index.json`` or, without unpickling arbitrary objects,
``pytorch_model.bin``) maps onto :class:`vlp.text.BertTextEncoder`. transformers
keeps separate ``query``/``key``/``value`` projections; vlp fuses them into one
``qkv`` (self-attention) or ``kv`` (cross-attention) projection, concatenated
along the output dimension in q, k, v order.

Ignored on import, and only these: the pooler (``pooler.dense.*``; vlp's heads
own their pooler) and the ``embeddings.position_ids`` buffer that older
transformers versions saved (it is ``arange``, not a weight).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vlp.text.encoder import BertTextConfig, BertTextEncoder
from vlp.text.tokenizer import Tokenizer

IGNORED_PREFIXES = ("pooler.", "embeddings.position_ids")

# transformers' activation names -> vlp.layers.activation names
_ACTS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
    "quick_gelu": "quick_gelu",
}

# (vlp submodule, transformers submodule(s)) of one layer; several sources are concatenated on dim 0.
_LAYER_TABLE = (
    ("attn.qkv", ("attention.self.query", "attention.self.key", "attention.self.value")),
    ("attn.out", ("attention.output.dense",)),
    ("norm1", ("attention.output.LayerNorm",)),
    ("cross_attn.q", ("crossattention.self.query",)),
    ("cross_attn.kv", ("crossattention.self.key", "crossattention.self.value")),
    ("cross_attn.out", ("crossattention.output.dense",)),
    ("norm_cross", ("crossattention.output.LayerNorm",)),
    ("mlp.fc1", ("intermediate.dense",)),
    ("mlp.fc2", ("output.dense",)),
    ("norm2", ("output.LayerNorm",)),
)
_EMBED_TABLE = (
    ("embeddings.word", "embeddings.word_embeddings"),
    ("embeddings.position", "embeddings.position_embeddings"),
    ("embeddings.segment", "embeddings.token_type_embeddings"),
    ("embeddings.norm", "embeddings.LayerNorm"),
)


@dataclass
class LoadResult:
    """What :func:`load_bert_weights` did: transformers names it could not fill or did not use."""

    missing: list[str] = field(default_factory=list)  # vlp parameters left at their initialization
    unexpected: list[str] = field(default_factory=list)  # checkpoint tensors nothing maps to
    ignored: list[str] = field(default_factory=list)  # pooler / position_ids, skipped on purpose


def _sources(vlp_name: str) -> tuple[str, ...] | None:
    """transformers names that make up vlp parameter ``vlp_name``; None when BERT has no counterpart."""
    module, _, leaf = vlp_name.rpartition(".")
    for ours, theirs in _EMBED_TABLE:
        if module == ours:
            return (f"{theirs}.{leaf}",)
    if module.startswith("layers."):
        _, index, sub = module.split(".", 2)
        for ours, theirs in _LAYER_TABLE:
            if sub == ours:
                return tuple(f"encoder.layer.{index}.{name}.{leaf}" for name in theirs)
    return None


def _normalize_keys(state_dict: Mapping[str, Any], prefix: str | None) -> dict[str, torch.Tensor]:
    """Strip ``prefix`` (auto: ``bert.`` when present) and rename old ``LayerNorm.gamma/beta`` to weight/bias."""
    if prefix is None:
        prefix = "bert." if any(k.startswith("bert.") for k in state_dict) else ""
    out = {}
    for key, value in state_dict.items():
        if prefix:
            if not key.startswith(prefix):
                if prefix != "bert.":  # an explicit prefix selects one part of a bigger checkpoint
                    continue
            else:
                key = key[len(prefix) :]
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"checkpoint entry {key!r} is a {type(value).__name__}, not a tensor")
        if ".LayerNorm." in key or key.startswith("LayerNorm."):
            key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        out[key] = value
    return out


def _listing(names: list[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" ... ({len(names) - limit} more)" if len(names) > limit else "")


def load_bert_weights(
    encoder: BertTextEncoder,
    folder_or_state_dict: str | Path | Mapping[str, torch.Tensor],
    strict: bool = True,
    prefix: str | None = None,
) -> LoadResult:
    """Copy a transformers BERT checkpoint into ``encoder`` (in place).

    ``folder_or_state_dict``: a checkpoint folder or weights file (see :func:`read_state_dict`) or
    a state dict, with or without the ``bert.`` prefix; ``prefix`` selects the tensors under that
    prefix from a bigger checkpoint (e.g. ``"text_encoder.bert."``). Pooler weights and
    ``embeddings.position_ids`` are ignored. With ``strict`` any missing or unexpected tensor is a
    ``ValueError`` listing their names; otherwise they are returned. A shape mismatch is always an error.
    """
    raw = folder_or_state_dict
    source = str(raw) if isinstance(raw, (str, Path)) else "state dict"
    checkpoint = _normalize_keys(read_state_dict(raw) if isinstance(raw, (str, Path)) else raw, prefix)
    result = LoadResult(ignored=sorted(k for k in checkpoint if k.startswith(IGNORED_PREFIXES)))
    used = set(result.ignored)
    mapped: dict[str, torch.Tensor] = {}
    mismatched = []
    for name, param in encoder.state_dict().items():
        sources = _sources(name)
        if sources is None or not all(s in checkpoint for s in sources):
            absent = (
                " + ".join(s for s in sources if s not in checkpoint) if sources else f"{name} (no BERT counterpart)"
            )
            result.missing.append(absent)
            continue
        value = torch.cat([checkpoint[s] for s in sources], dim=0) if len(sources) > 1 else checkpoint[sources[0]]
        used.update(sources)
        if value.shape != param.shape:
            mismatched.append(f"{' + '.join(sources)}: checkpoint {tuple(value.shape)} vs encoder {tuple(param.shape)}")
            continue
        mapped[name] = value
    result.unexpected = sorted(set(checkpoint) - used)
    if mismatched:
        raise ValueError(f"{source}: shapes do not match the encoder config: {_listing(mismatched, 10)}")
    if strict and (result.missing or result.unexpected):
        parts = []
        if result.missing:
            parts.append(f"missing {len(result.missing)}: {_listing(result.missing)}")
        if result.unexpected:
            parts.append(f"unexpected {len(result.unexpected)}: {_listing(result.unexpected)}")
        raise ValueError(
            f"{source}: checkpoint does not match the BERT encoder ({'; '.join(parts)}). Pooler weights are "
            "ignored; pass strict=False to load the rest (e.g. new cross-attention layers or a cls.* MLM head)"
        )
    encoder.load_state_dict(mapped, strict=False)
    return result


def export_bert_state_dict(encoder: BertTextEncoder) -> dict[str, torch.Tensor]:
    """The encoder's weights under transformers' ``BertModel`` names (no pooler, no prefix).

    Only post-norm encoders without a final LayerNorm have a BERT counterpart.
    """
    cfg = encoder.cfg
    if cfg.norm_first or cfg.final_norm or not cfg.embed_norm or cfg.type_vocab_size == 0:
        raise ValueError(
            "only a BERT-layout encoder (norm_first=False, final_norm=False, embed_norm=True, type_vocab_size>0) "
            "exports to transformers' BertModel names"
        )
    out = {}
    for name, value in encoder.state_dict().items():
        sources = _sources(name)
        if sources is None:
            raise ValueError(f"parameter {name} has no transformers BERT counterpart")
        for source, chunk in zip(sources, value.chunk(len(sources), dim=0)):
            out[source] = chunk.detach().clone()
    return out


def bert_config_to_vlp(config_json: Mapping[str, Any], **overrides: Any) -> BertTextConfig:
    """A transformers ``config.json`` (as a dict) -> :class:`BertTextConfig`; ``overrides`` replace fields.

    ALBEF's ``fusion_layer``/``encoder_width`` and BLIP's ``add_cross_attention``/``encoder_width`` map to
    ``cross_attention_from``/``context_dim``; ``is_decoder`` to ``causal``.
    """
    if not isinstance(config_json, Mapping):
        raise ValueError(f"expected a BERT config mapping, got {type(config_json).__name__}")
    model_type = config_json.get("model_type", "bert")
    if model_type != "bert":
        raise ValueError(f"config model_type is {model_type!r}; only 'bert' maps to BertTextEncoder")
    position_type = config_json.get("position_embedding_type", "absolute")
    if position_type != "absolute":
        raise ValueError(f"position_embedding_type={position_type!r} is not supported; expected 'absolute'")
    act = config_json.get("hidden_act", "gelu")
    if act not in _ACTS:
        raise ValueError(f"hidden_act={act!r} is not supported; expected one of {', '.join(_ACTS)}")
    layers = int(config_json.get("num_hidden_layers", 12))
    if "fusion_layer" in config_json:
        cross_from = int(config_json["fusion_layer"])
    else:
        cross_from = 0 if config_json.get("add_cross_attention") else -1
    values = dict(
        vocab_size=int(config_json.get("vocab_size", 30522)),
        dim=int(config_json.get("hidden_size", 768)),
        layers=layers,
        heads=int(config_json.get("num_attention_heads", 12)),
        mlp_dim=int(config_json.get("intermediate_size", 3072)),
        max_positions=int(config_json.get("max_position_embeddings", 512)),
        type_vocab_size=int(config_json.get("type_vocab_size", 2)),
        dropout=float(config_json.get("hidden_dropout_prob", 0.1)),
        attn_dropout=float(config_json.get("attention_probs_dropout_prob", 0.1)),
        eps=float(config_json.get("layer_norm_eps", 1e-12)),
        act=_ACTS[act],
        causal=bool(config_json.get("is_decoder", False)),
        cross_attention_from=cross_from if cross_from < layers else -1,
        context_dim=config_json.get("encoder_width") if cross_from >= 0 else None,
        init_std=float(config_json.get("initializer_range", 0.02)),
    )
    values.update(overrides)
    return BertTextConfig(**values)


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as err:  # SafetensorError, or OSError from a truncated mmap
        raise ValueError(
            f"{path}: not a readable safetensors file ({err}); it may be truncated or of another format - "
            "re-download or re-export it"
        ) from err


def _load_torch_bin(path: Path) -> dict[str, torch.Tensor]:
    try:
        # weights_only: never unpickle arbitrary objects from a downloaded file
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: cannot be read as a tensor-only torch checkpoint ({err})") from err
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a state dict, got {type(data).__name__}")
    return dict(data)


def _load_index(path: Path) -> dict[str, torch.Tensor]:
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
        shards = sorted(set(index["weight_map"].values()))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: expected a safetensors index JSON with a 'weight_map' ({err})") from err
    out: dict[str, torch.Tensor] = {}
    for shard in shards:
        shard_path = path.parent / shard
        if not shard_path.is_file():
            raise FileNotFoundError(f"{shard_path}: shard listed in {path.name} is missing")
        out.update(_load_safetensors(shard_path))
    return out


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint folder or file: ``model.safetensors`` preferred, then a sharded
    ``model.safetensors.index.json``, then ``pytorch_model.bin`` (read with ``weights_only=True``)."""
    path = Path(path)
    if path.is_dir():
        for name, reader in (
            ("model.safetensors", _load_safetensors),
            ("model.safetensors.index.json", _load_index),
            ("pytorch_model.bin", _load_torch_bin),
        ):
            if (path / name).is_file():
                return reader(path / name)
        raise FileNotFoundError(
            f"{path}: no weights found; expected model.safetensors, model.safetensors.index.json or pytorch_model.bin"
        )
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    if path.name.endswith(".index.json"):
        return _load_index(path)
    if path.suffix in (".bin", ".pt", ".pth"):
        return _load_torch_bin(path)
    return _load_safetensors(path)


def read_bert_config(folder: str | Path) -> BertTextConfig:
    """``config.json`` of a transformers checkpoint folder -> :class:`BertTextConfig`."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; expected a transformers BERT checkpoint folder")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: is not valid JSON ({err})") from err
    try:
        return bert_config_to_vlp(data)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err


def text_encoder_from_pretrained(folder: str | Path, strict: bool = True) -> tuple[BertTextEncoder, Tokenizer]:
    """Encoder (in eval mode, as transformers' ``from_pretrained``) and tokenizer of a BERT checkpoint folder."""
    cfg = read_bert_config(folder)
    encoder = BertTextEncoder(cfg)
    load_bert_weights(encoder, folder, strict=strict)
    tokenizer = Tokenizer.load(folder)
    if tokenizer.vocab_size > cfg.vocab_size:
        raise ValueError(
            f"{folder}: tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is {cfg.vocab_size}"
        )
    return encoder.eval(), tokenizer
