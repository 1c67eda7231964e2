"""Grid encoder (ResNet cells, Pixel-BERT sampling) and CLIP's ModifiedResNet tower."""

import pytest
import torch
import torch.nn.functional as F

from vlp.config import ConfigError, build, from_dict
from vlp.data.batch import Batch
from vlp.vision import ClipResNetConfig, ClipResNetEncoder, GridConfig, GridEncoder, ResNetConfig, VisionConfig

SMALL = dict(block="basic", depths=[1, 1, 1], widths=[4, 8, 8], stem_width=4)


def grid_model(**overrides) -> GridEncoder:
    options = dict(image_size=64, backbone=ResNetConfig(**SMALL), dim=8, dropout=0.0)
    options.update(overrides)
    return GridEncoder(GridConfig(**options))


def test_grid_output_shape_and_positions():
    model = grid_model().eval()
    assert model.grid_size == (4, 4) and model.num_prefix_tokens == 0  # 64 / (4 * 2 ** 2)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 48))  # 4 x 3 cells: the learned grid is resized
    assert out.tokens.shape == (2, 12, 8)
    assert out.mask.shape == (2, 12) and bool(out.mask.all())
    torch.testing.assert_close(out.positions[1, 5], torch.tensor([1.5 / 4, 2.5 / 3]))  # cell (1, 2)


def test_odd_image_sizes_follow_the_ceil_rule():
    cfg = ResNetConfig(block="bottleneck", depths=[1, 1], widths=[2, 4], stem_width=4)
    model = GridEncoder(GridConfig(image_size=(37, 50), backbone=cfg, dim=8, pos="sincos")).eval()
    # 37 -> 19 -> 10 -> 5 and 50 -> 25 -> 13 -> 7 through stem conv, maxpool, stage 2
    assert model.grid_size == (5, 7)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 37, 50)).tokens.shape == (1, 35, 8)
    assert model.backbone.out_channels == 16


def test_pixel_sampling_keeps_k_tokens_in_training_all_at_eval():
    torch.manual_seed(0)
    model = grid_model(sample_pixels=5, backbone=ResNetConfig(**SMALL, frozen_bn=True))
    images = torch.randn(3, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        full = model(images)
    assert full.tokens.shape == (3, 16, 8)
    model.train()
    with torch.no_grad():
        sampled = model(images)
    assert sampled.tokens.shape == (3, 5, 8) and sampled.positions.shape == (3, 5, 2)
    assert bool(sampled.mask.all())
    # each kept token is the full-grid token at its position (BN frozen, no dropout)
    for b in range(3):
        cells = [round(r * 4 - 0.5) * 4 + round(c * 4 - 0.5) for r, c in sampled.positions[b].tolist()]
        assert cells == sorted(set(cells))  # distinct and in raster order
        torch.testing.assert_close(sampled.tokens[b], full.tokens[b, cells])


def test_frozen_bn_keeps_statistics():
    model = grid_model(backbone=ResNetConfig(**SMALL, frozen_bn=True)).train()
    before = model.backbone.bn1.running_mean.clone()
    model(torch.randn(2, 3, 64, 64))
    assert torch.equal(model.backbone.bn1.running_mean, before)
    assert not model.backbone.bn1.weight.requires_grad
    trainable = grid_model().train()
    trainable(torch.randn(2, 3, 64, 64) + 3.0)
    assert not torch.equal(trainable.backbone.bn1.running_mean, torch.zeros(4))


def test_grid_config_from_dict():
    cfg = from_dict(
        VisionConfig.member("grid"),
        {"type": "grid", "image_size": 32, "dim": 8, "backbone": {**SMALL, "block": "bottleneck"}, "sample_pixels": 3},
    )
    assert isinstance(build(cfg), GridEncoder)
    with pytest.raises(ConfigError, match="equally long"):
        ResNetConfig(depths=[1, 1], widths=[4])
    with pytest.raises(ConfigError, match="sample_pixels"):
        GridConfig(sample_pixels=-1)


def clip_model() -> ClipResNetEncoder:
    return ClipResNetEncoder(ClipResNetConfig(image_size=64, layers=[1, 1, 2, 1], width=8, heads=4, dim=12))


def test_clip_resnet_tokens_match_multi_head_attention_reference():
    torch.manual_seed(0)
    model = clip_model().eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(images)
        features = model.forward_features(images)  # (B, 256, 2, 2)
        pool = model.attnpool
        # OpenCLIP's AttentionPool2d, sequence-first, through torch's reference MHA
        x = features.flatten(2).permute(2, 0, 1)
        x = torch.cat([x.mean(dim=0, keepdim=True), x]) + pool.positional_embedding[:, None, :]
        ref, _ = F.multi_head_attention_forward(
            query=x,
            key=x,
            value=x,
            embed_dim_to_check=x.shape[-1],
            num_heads=4,
            q_proj_weight=pool.q_proj.weight,
            k_proj_weight=pool.k_proj.weight,
            v_proj_weight=pool.v_proj.weight,
            in_proj_weight=None,
            in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
            bias_k=None,
            bias_v=None,
            add_zero_attn=False,
            dropout_p=0.0,
            out_proj_weight=pool.c_proj.weight,
            out_proj_bias=pool.c_proj.bias,
            use_separate_proj_weight=True,
            training=False,
            need_weights=False,
        )
    assert features.shape == (2, 256, 2, 2)
    assert out.tokens.shape == (2, 5, 12)
    torch.testing.assert_close(out.tokens, ref.transpose(0, 1), atol=1e-5, rtol=1e-5)
    assert out.positions[0, 0].tolist() == [-1.0, -1.0] and model.num_prefix_tokens == 1
    torch.testing.assert_close(
        out.positions[0, 1:], torch.tensor([[0.25, 0.25], [0.25, 0.75], [0.75, 0.25], [0.75, 0.75]])
    )


def test_clip_resnet_parameter_layout_and_other_sizes():
    model = clip_model().eval()
    keys = set(model.state_dict())
    for key in [
        "conv1.weight",
        "bn2.running_var",
        "conv3.weight",
        "layer1.0.downsample.0.weight",
        "layer2.0.downsample.1.running_mean",
        "layer3.1.bn3.weight",
        "attnpool.positional_embedding",
        "attnpool.q_proj.weight",
        "attnpool.c_proj.bias",
    ]:
        assert key in keys, key
    assert model.attnpool.positional_embedding.shape == (5, 256)
    assert not any(key.startswith(("fc.", "proj")) for key in keys)
    with torch.no_grad():
        out = model(Batch(images=torch.randn(1, 3, 96, 64)))  # 3 x 2 cells: positions resized
    assert out.tokens.shape == (1, 7, 12)
    with pytest.raises(ConfigError, match="multiple of 32"):
        ClipResNetConfig(image_size=100)
