"""U-Net: shapes, timestep embedding formula, cross-attention that ignores padded text tokens."""

from __future__ import annotations

import math

import pytest
import torch

from vlp.config import ConfigError, from_dict
from vlp.generation.unet import UNet, UNetConfig, timestep_embedding


def randomize(module: torch.nn.Module, std: float = 0.05) -> None:
    """Non-zero weights everywhere (zero-initialised branches would make the checks below vacuous)."""
    torch.manual_seed(0)
    for p in module.parameters():
        torch.nn.init.normal_(p, std=std)


def test_timestep_embedding_formula():
    t = torch.tensor([0, 3, 250])
    emb = timestep_embedding(t, 6)
    for row, step in enumerate(t.tolist()):
        freqs = [10000 ** (-k / 3) for k in range(3)]
        expected = [math.cos(step * f) for f in freqs] + [math.sin(step * f) for f in freqs]
        assert emb[row].tolist() == pytest.approx(expected, abs=1e-5)
    assert timestep_embedding(t, 7)[:, -1].abs().sum() == 0  # odd widths are zero-padded


@pytest.mark.parametrize("patch", [1, 2])
def test_unet_output_shape_and_skip_bookkeeping(patch):
    cfg = UNetConfig(channels=8, channel_mult=(1, 2, 2), patch_size=patch, groups=4, heads=2, context_dim=12)
    net = UNet(cfg)
    assert net.encoder.skip_channels == [8, 8, 8, 16, 16, 16]  # conv_in, each stage, each downsample
    x = torch.randn(2, 3, 16, 16)
    out = net(x, torch.tensor([1, 500]), torch.randn(2, 5, 12), torch.ones(2, 5, dtype=torch.bool))
    assert out.shape == x.shape


def test_unet_rejects_bad_shapes():
    net = UNet(
        UNetConfig(
            channels=8, channel_mult=(1, 2), groups=4, heads=2, self_attention_levels=[], cross_attention_levels=[]
        )
    )
    with pytest.raises(ValueError, match="divisible by 2"):
        net(torch.randn(1, 3, 15, 15), torch.tensor([0]))
    with pytest.raises(ValueError, match="t: expected shape"):
        net(torch.randn(2, 3, 16, 16), torch.tensor([0]))


def test_cross_attention_ignores_padded_text_tokens():
    cfg = UNetConfig(
        channels=8, channel_mult=(1, 2), groups=4, heads=2, context_dim=12, self_attention_levels=[1],
        cross_attention_levels=[0, 1],
    )  # fmt: skip
    net = UNet(cfg).eval()
    randomize(net)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([10, 90])
    context = torch.randn(2, 6, 12)
    mask = torch.tensor([[True] * 6, [True, True, True, False, False, False]])
    base = net(x, t, context, mask)
    padded_changed = context.clone()
    padded_changed[1, 3:] = torch.randn(3, 12) * 5
    assert torch.allclose(net(x, t, padded_changed, mask), base, atol=1e-6)
    real_changed = context.clone()
    real_changed[1, 0] += 1.0
    moved = net(x, t, real_changed, mask)
    assert torch.allclose(moved[0], base[0], atol=1e-6)  # rows are independent
    assert not torch.allclose(moved[1], base[1], atol=1e-4)


def test_pooled_text_adds_the_mean_of_kept_tokens_to_the_timestep_embedding():
    cfg = UNetConfig(
        channels=8, channel_mult=(1, 2), groups=4, heads=2, context_dim=12, pooled_text=True,
        self_attention_levels=[], cross_attention_levels=[],
    )  # fmt: skip
    net = UNet(cfg).eval()
    randomize(net, std=0.3)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([10, 90])
    context = torch.randn(2, 4, 12)
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    _, _, temb = net.encoder(x, t, context, mask)
    pooled = torch.stack([context[0].mean(0), context[1, :2].mean(0)])  # kept tokens only
    expected = net.encoder.time_embed(timestep_embedding(t, 8)) + net.encoder.text_embed(pooled)
    assert torch.allclose(temb, expected, atol=1e-5)
    # the prompt reaches the output through the timestep embedding alone (no cross-attention in the stages)
    other = context.clone()
    other[0, 1] += 1.0
    assert not torch.allclose(net(x, t, other, mask)[0], net(x, t, context, mask)[0], atol=1e-4)
    with pytest.raises(ValueError, match="pooled_text=True needs a text context"):
        UNet(UNetConfig(channels=8, groups=4, heads=2, pooled_text=True))


def test_unet_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="self_attention_levels"):
        from_dict(UNetConfig, {"channel_mult": [1, 2], "self_attention_levels": [2]})
    with pytest.raises(ConfigError, match="groups"):
        from_dict(UNetConfig, {"channels": 12, "groups": 8, "heads": 4})
    with pytest.raises(ConfigError, match="UNetConfig.chanels: unknown key"):
        from_dict(UNetConfig, {"chanels": 12})
