"""single_stream fusion against torch's own TransformerEncoderLayer run on the concatenation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vlp.config import ConfigError, from_dict
from vlp.core.outputs import VisualTokens
from vlp.fusion import FusionConfig, SingleStreamConfig, SingleStreamFusion
from vlp.models.config import ModelConfig

D, HEADS = 16, 2


def make(norm_first: bool, **kw) -> SingleStreamFusion:
    torch.manual_seed(0)
    cfg = SingleStreamConfig(dim=D, layers=2, heads=HEADS, norm_first=norm_first, eps=1e-6, **kw)
    return SingleStreamFusion(cfg).eval()


def inputs(image_dim: int = D):
    g = torch.Generator().manual_seed(1)
    text = torch.randn(2, 5, D, generator=g)
    image = torch.randn(2, 4, image_dim, generator=g)
    text_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    image_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    return text, text_mask, VisualTokens(image, image_mask)


def torch_reference(fusion: SingleStreamFusion, text, text_mask, image: VisualTokens):
    """Concatenate with modality embeddings and run torch.nn.TransformerEncoderLayer copies."""
    mod = fusion.modality.weight
    x = torch.cat([text + mod[0], image.tokens + mod[1]], 1)
    keep = torch.cat([text_mask, image.mask], 1)
    for block in fusion.encoder.layers:
        ref = nn.TransformerEncoderLayer(
            D,
            HEADS,
            4 * D,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=fusion.cfg.norm_first,
            layer_norm_eps=1e-6,
        ).eval()
        with torch.no_grad():
            ref.self_attn.in_proj_weight.copy_(block.attn.qkv.weight)
            ref.self_attn.in_proj_bias.copy_(block.attn.qkv.bias)
            ref.self_attn.out_proj.weight.copy_(block.attn.out.weight)
            ref.self_attn.out_proj.bias.copy_(block.attn.out.bias)
            for mine, theirs in [(block.mlp.fc1, ref.linear1), (block.mlp.fc2, ref.linear2)]:
                theirs.weight.copy_(mine.weight)
                theirs.bias.copy_(mine.bias)
            for mine, theirs in [(block.norm1, ref.norm1), (block.norm2, ref.norm2)]:
                theirs.weight.copy_(mine.weight)
                theirs.bias.copy_(mine.bias)
        x = ref(x, src_key_padding_mask=~keep)
    if fusion.cfg.norm_first:
        x = F.layer_norm(x, (D,), fusion.norm.weight, fusion.norm.bias, 1e-6)
    pooled = torch.tanh(x[:, 0] @ fusion.pooler.dense.weight.T + fusion.pooler.dense.bias)
    return x, keep, pooled


@pytest.mark.parametrize("norm_first", [True, False])
def test_single_stream_equals_concat_then_torch_transformer(norm_first):
    fusion = make(norm_first)
    text, text_mask, image = inputs()
    with torch.no_grad():
        out = fusion(text, text_mask, image)
        ref, keep, pooled = torch_reference(fusion, text, text_mask, image)
    got = torch.cat([out.text, out.image], 1)
    assert out.text.shape == (2, 5, D) and out.image.shape == (2, 4, D) and out.pooled.shape == (2, D)
    torch.testing.assert_close(got[keep], ref[keep], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.pooled, pooled, atol=1e-5, rtol=1e-4)


def test_single_stream_padding_is_ignored():
    fusion = make(norm_first=False)
    text, text_mask, image = inputs()
    out = fusion(text, text_mask, image)
    text2 = torch.where(text_mask[..., None], text, torch.randn_like(text) * 5)
    image2 = VisualTokens(
        torch.where(image.mask[..., None], image.tokens, torch.randn_like(image.tokens) * 5), image.mask
    )
    out2 = fusion(text2, text_mask, image2)
    torch.testing.assert_close(out.text[text_mask], out2.text[text_mask])
    torch.testing.assert_close(out.image[image.mask], out2.image[image.mask])
    torch.testing.assert_close(out.pooled, out2.pooled)
    # and a real token does matter
    image3 = VisualTokens(image.tokens.clone(), image.mask)
    image3.tokens[1, 0] += 1.0
    assert not torch.allclose(fusion(text, text_mask, image3).pooled[1], out.pooled[1])


def test_single_stream_projects_other_image_width():
    fusion = make(norm_first=True, image_in_dim=12)
    text, text_mask, image = inputs(image_dim=12)
    out = fusion(text, text_mask, image)
    assert out.image.shape == (2, 4, D)
    with pytest.raises(ValueError, match=r"image tokens must be \(B, N, 12\)"):
        fusion(text, text_mask, inputs()[2])
    with pytest.raises(ValueError, match="bool keep-mask"):
        fusion(text, text_mask.long(), image)


def test_single_stream_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="dim 30 must be a positive multiple of heads 4"):
        from_dict(ModelConfig, {"fusion": {"type": "single_stream", "dim": 30, "heads": 4}})
    with pytest.raises(ConfigError, match="unknown FusionConfig 'single'"):
        from_dict(ModelConfig, {"fusion": {"type": "single"}})
    cfg = from_dict(ModelConfig, {"fusion": {"type": "single_stream", "dim": 32, "heads": 4}})
    assert isinstance(cfg.fusion, FusionConfig) and cfg.fusion.dim == 32
