"""text_cross (ALBEF/BLIP): fusion borrows the text encoder's cross-attention layers."""

from __future__ import annotations

import pytest
import torch

from vlp.config import ConfigError
from vlp.core.outputs import VisualTokens
from vlp.fusion import TextCrossConfig, TextCrossFusion
from vlp.text import BertTextConfig, BertTextEncoder


def encoder(cross_from: int) -> BertTextEncoder:
    torch.manual_seed(0)
    cfg = BertTextConfig(
        vocab_size=50,
        dim=16,
        layers=4,
        heads=2,
        mlp_dim=32,
        max_positions=16,
        dropout=0.0,
        cross_attention_from=cross_from,
        context_dim=12,
    )
    return BertTextEncoder(cfg).eval()


def inputs():
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(5, 50, (2, 6), generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    image = VisualTokens(torch.randn(2, 5, 12, generator=g), torch.tensor([[1] * 5, [1, 1, 1, 0, 0]], dtype=torch.bool))
    return ids, mask, image


def full_stack(enc: BertTextEncoder, ids, mask, image, context_from: int):
    """Every layer by hand: no context below ``context_from``, the image as context from there on."""
    h = enc.embeddings(ids)
    for i, layer in enumerate(enc.layers):
        ctx = (image.tokens, image.mask) if i >= context_from else (None, None)
        h = layer(h, mask, *ctx)
    return h


def test_albef_layout_shares_layers_and_continues_the_stack():
    enc = encoder(cross_from=2)
    fusion = TextCrossFusion(TextCrossConfig(from_layer=2)).bind(enc)
    assert list(fusion.parameters()) == []  # owns no weights at all
    assert fusion.layers[0] is enc.layers[2] and fusion.layers[1] is enc.layers[3]
    assert fusion.layers[0].cross_attn.q.weight is enc.layers[2].cross_attn.q.weight
    ids, mask, image = inputs()
    with torch.no_grad():
        unimodal = enc(ids, mask, end_layer=2)
        fused = fusion(unimodal, mask, image)
        ref = full_stack(enc, ids, mask, image, context_from=2)
    torch.testing.assert_close(fused.text[mask], ref[mask], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(fused.pooled, ref[:, 0], atol=1e-5, rtol=1e-4)
    assert fused.image is None


def test_blip_layout_restarts_from_the_embeddings():
    enc = encoder(cross_from=0)
    fusion = TextCrossFusion(TextCrossConfig(from_layer=0, restart=True, pooler=True)).bind(enc)
    assert [n for n, _ in fusion.named_parameters()] == ["pooler.dense.weight", "pooler.dense.bias"]
    ids, mask, image = inputs()
    with torch.no_grad():
        fused = fusion(enc.embeddings(ids), mask, image)
        ref = full_stack(enc, ids, mask, image, context_from=0)
        unimodal = enc(ids, mask)  # BLIP's ITC text: every layer, no image
    torch.testing.assert_close(fused.text[mask], ref[mask], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(fused.pooled, torch.tanh(fusion.pooler.dense(ref[:, 0])), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(unimodal[mask], ref[mask], atol=1e-3)  # the image does matter


def test_text_cross_padding_is_ignored():
    enc = encoder(cross_from=2)
    fusion = TextCrossFusion(TextCrossConfig(from_layer=2)).bind(enc)
    ids, mask, image = inputs()
    unimodal = enc(ids, mask, end_layer=2)
    out = fusion(unimodal, mask, image)
    noisy_text = torch.where(mask[..., None], unimodal, torch.randn_like(unimodal))
    noisy_image = VisualTokens(torch.where(image.mask[..., None], image.tokens, 9.0), image.mask)
    out2 = fusion(noisy_text, mask, noisy_image)
    torch.testing.assert_close(out.text[mask], out2.text[mask])


def test_text_cross_bind_errors():
    fusion = TextCrossFusion(TextCrossConfig(from_layer=1))
    with pytest.raises(RuntimeError, match="not bound"):
        fusion(torch.zeros(1, 2, 16), torch.ones(1, 2, dtype=torch.bool), inputs()[2])
    with pytest.raises(ConfigError, match=r"layers \[1\] have none.*cross_attention_from"):
        fusion.bind(encoder(cross_from=2))
    with pytest.raises(ConfigError, match="outside the text encoder's 4 layers"):
        TextCrossFusion(TextCrossConfig(from_layer=4)).bind(encoder(cross_from=2))
    with pytest.raises(ValueError, match="set from_layer: 0"):
        TextCrossConfig(from_layer=2, restart=True)
