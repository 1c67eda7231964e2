"""TextEmbeddings and BertTextEncoder against manual computations and transformers' BertModel."""

import pytest
import torch

from vlp.config import ConfigError, build, from_dict
from vlp.interop.bert import export_bert_state_dict, load_bert_weights
from vlp.models.config import ModelConfig
from vlp.text import BertTextConfig, BertTextEncoder, TextEmbeddings
from vlp.text.encoder import pool_tokens

TINY = dict(vocab_size=50, dim=16, layers=4, heads=2, mlp_dim=32, max_positions=20, dropout=0.0)


def tiny(**kw) -> BertTextEncoder:
    torch.manual_seed(0)
    return BertTextEncoder(BertTextConfig(**{**TINY, **kw})).eval()


def batch():
    ids = torch.tensor([[2, 7, 9, 11, 3, 0], [2, 5, 3, 0, 0, 0]])
    return ids, ids != 0, torch.tensor([[0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 0, 0]])


def test_embeddings_are_the_normalized_sum():
    torch.manual_seed(0)
    emb = TextEmbeddings(vocab_size=10, dim=4, max_positions=8, type_vocab_size=2, eps=1e-5)
    ids = torch.tensor([[1, 5, 2], [3, 3, 0]])
    types = torch.tensor([[0, 1, 1], [0, 0, 0]])
    out = emb(ids, types)
    for b in range(2):
        for i in range(3):
            v = emb.word.weight[ids[b, i]] + emb.position.weight[i] + emb.segment.weight[types[b, i]]
            manual = (v - v.mean()) / torch.sqrt(v.var(unbiased=False) + 1e-5) * emb.norm.weight + emb.norm.bias
            torch.testing.assert_close(out[b, i], manual)
    # default segment is 0; explicit positions are used as given
    torch.testing.assert_close(emb(ids), emb(ids, torch.zeros_like(ids)))
    shifted = emb(ids, types, position_ids=torch.tensor([2, 3, 4]))
    v = emb.word.weight[5] + emb.position.weight[3] + emb.segment.weight[1]
    torch.testing.assert_close(
        shifted[0, 1], torch.nn.functional.layer_norm(v, (4,), emb.norm.weight, emb.norm.bias, 1e-5)
    )


def test_embeddings_without_segment_or_norm_are_a_plain_sum():
    emb = TextEmbeddings(vocab_size=10, dim=4, max_positions=8, type_vocab_size=0, norm=False)
    ids = torch.tensor([[1, 2]])
    torch.testing.assert_close(emb(ids)[0], emb.word.weight[[1, 2]] + emb.position.weight[:2])


@pytest.mark.parametrize(
    "ids, types, message",
    [
        (torch.tensor([[1, 10]]), None, r"ids range over \[1, 10\] but vocab_size is 10"),
        (torch.zeros(1, 9, dtype=torch.long), None, "length 9 exceeds max_positions=8"),
        (torch.zeros(1, 2), None, "expected \\(B, L\\) integer ids"),
        (torch.tensor([[1, 2]]), torch.tensor([[0, 2]]), r"token_type_ids: values range over \[0, 2\]"),
    ],
)
def test_embeddings_reject_out_of_range_input(ids, types, message):
    emb = TextEmbeddings(vocab_size=10, dim=4, max_positions=8)
    with pytest.raises(ValueError, match=message):
        emb(ids, types)


def test_matches_transformers_bert_model_with_exported_weights():
    transformers = pytest.importorskip("transformers")
    enc = tiny()
    hf_cfg = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=20, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    hf = transformers.BertModel(hf_cfg, add_pooling_layer=False).eval()
    missing, unexpected = hf.load_state_dict(export_bert_state_dict(enc), strict=False)
    assert not unexpected and all("position_ids" in k for k in missing)
    ids, mask, types = batch()
    with torch.no_grad():
        ours, states = enc(ids, mask, types, return_all=True)
        ref = hf(input_ids=ids, attention_mask=mask.long(), token_type_ids=types, output_hidden_states=True)
    torch.testing.assert_close(ours[mask], ref.last_hidden_state[mask], atol=1e-5, rtol=1e-4)
    assert len(states) == 4
    torch.testing.assert_close(states[1][mask], ref.hidden_states[2][mask], atol=1e-5, rtol=1e-4)


def test_cross_attention_matches_transformers_decoder():
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=20, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        is_decoder=True, add_cross_attention=True,
    )  # fmt: skip
    torch.manual_seed(1)
    hf = transformers.BertModel(hf_cfg, add_pooling_layer=False).eval()
    enc = tiny(layers=2, causal=True, cross_attention_from=0)
    load_bert_weights(enc, hf.state_dict())
    ids, mask, types = batch()
    image = torch.randn(2, 5, 16)
    image_mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    with torch.no_grad():
        ours = enc(ids, mask, types, context=image, context_mask=image_mask)
        ref = hf(
            input_ids=ids, attention_mask=mask.long(), token_type_ids=types,
            encoder_hidden_states=image, encoder_attention_mask=image_mask.long(),
        ).last_hidden_state  # fmt: skip
    torch.testing.assert_close(ours[mask], ref[mask], atol=1e-5, rtol=1e-4)


def test_split_stack_equals_full_pass_and_context_reaches_only_upper_layers():
    enc = tiny(cross_attention_from=2, context_dim=8)
    assert [layer.cross_attn is not None for layer in enc.layers] == [False, False, True, True]
    ids, mask, types = batch()
    image = torch.randn(2, 3, 8)
    with torch.no_grad():
        text = enc(ids, mask, types, end_layer=2)  # ALBEF's text encoder
        fused = enc(text, mask, context=image, start_layer=2)  # ALBEF's fusion encoder
        explicit = enc.forward_layers(text, mask, start=2, context=image)
        full = enc(ids, mask, types, context=image)
        text_only = enc(ids, mask, types)  # BLIP's unimodal pass: cross-attention layers skip it
    torch.testing.assert_close(fused, full)
    torch.testing.assert_close(explicit, full)
    assert (full - text_only).abs().max() > 1e-3
    with pytest.raises(ValueError, match=r"context given but layers \[0, 2\) have no cross-attention"):
        enc(ids, mask, context=image, end_layer=2)
    with pytest.raises(ValueError, match="continues from hidden states"):
        enc(ids, mask, start_layer=2)
    with pytest.raises(ValueError, match="got float hidden states"):
        enc(text, mask)


def test_padding_and_causal_masks_hide_tokens():
    enc = tiny()
    ids, mask, _ = batch()
    with torch.no_grad():
        out = enc(ids, mask)
        changed = ids.clone()
        changed[1, 4] = 7  # a padded position
        torch.testing.assert_close(enc(changed, mask)[1, :3], out[1, :3])
        causal = enc(ids, mask, causal=True)
        later = ids.clone()
        later[0, 3] = 8  # a future token cannot change earlier positions
        after = enc(later, mask, causal=True)
    torch.testing.assert_close(after[0, :3], causal[0, :3])
    assert (after[0, 3] - causal[0, 3]).abs().max() > 1e-4
    with pytest.raises(TypeError, match="bool keep-mask"):
        enc(ids, mask.long())


def test_pooling_modes():
    ids, mask, _ = batch()
    hidden = torch.randn(2, 6, 16)
    assert torch.equal(tiny(pooling="cls").pool(hidden, ids, mask), hidden[:, 0])
    mean = tiny(pooling="mean").pool(hidden, ids, mask)
    torch.testing.assert_close(mean[1], hidden[1, :3].mean(0))
    last = tiny(pooling="eos").pool(hidden, ids, mask)  # the last kept token: [SEP] at 4 and 2
    assert torch.equal(last, torch.stack([hidden[0, 4], hidden[1, 2]]))
    by_id = tiny(pooling="eos", eos_id=9).pool(hidden, torch.tensor([[2, 9, 0, 0, 0, 0], [9, 1, 1, 9, 0, 0]]))
    assert torch.equal(by_id, torch.stack([hidden[0, 1], hidden[1, 0]]))


def test_pre_norm_tower_and_gradient_checkpointing():
    enc = tiny(norm_first=True, final_norm=True, embed_norm=False, type_vocab_size=0, causal=True)
    assert isinstance(enc.final_norm, torch.nn.LayerNorm) and enc.embeddings.segment is None
    ids, mask, _ = batch()
    enc.train()
    enc(ids, mask).sum().backward()
    plain = [p.grad.clone() for p in enc.parameters()]
    enc.zero_grad()
    enc.set_grad_checkpointing(True)
    enc(ids, mask).sum().backward()
    for a, p in zip(plain, enc.parameters()):
        torch.testing.assert_close(p.grad, a)


def test_config_builds_from_a_recipe_dict_and_validates():
    cfg = from_dict(ModelConfig, {"text": {"type": "bert", **TINY, "pooling": "mean"}}).text
    assert isinstance(cfg, BertTextConfig) and cfg.pooling == "mean"
    assert isinstance(build(cfg), BertTextEncoder)
    with pytest.raises(ConfigError, match=r"text: dim=16 is not divisible by heads=3"):
        from_dict(ModelConfig, {"text": {"type": "bert", **TINY, "heads": 3}})
    with pytest.raises(ConfigError, match=r"text\.pooling: expected one of \['cls', 'eos', 'argmax', 'mean', 'last'\]"):
        from_dict(ModelConfig, {"text": {"type": "bert", "pooling": "max"}})
    with pytest.raises(ConfigError, match="cross_attention_from=4"):
        from_dict(ModelConfig, {"text": {"type": "bert", **TINY, "cross_attention_from": 4}})
    with pytest.raises(ConfigError, match="act: unknown activation 'swish'"):
        from_dict(ModelConfig, {"text": {"type": "bert", "act": "swish"}})


def test_last_pooling_takes_the_last_position_even_when_it_is_padding():
    # SigLIP pools position -1 whatever the mask; eos without an id takes the last *kept* token
    hidden = torch.arange(2 * 3 * 2, dtype=torch.float).reshape(2, 3, 2)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    assert torch.equal(pool_tokens(hidden, "last", mask), torch.stack([hidden[0, 2], hidden[1, 2]]))
    assert torch.equal(pool_tokens(hidden, "eos", mask), torch.stack([hidden[0, 1], hidden[1, 2]]))
