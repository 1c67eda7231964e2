"""Patch (ViT) encoder: patchify arithmetic, positions, resolution changes, configs."""

import pytest
import torch
import torch.nn.functional as F

from vlp.config import ConfigError, build, from_dict
from vlp.data.batch import Batch
from vlp.vision import PatchConfig, PatchEncoder, VisionConfig


def tiny(**overrides) -> PatchEncoder:
    options = dict(image_size=16, patch_size=4, dim=8, layers=0, heads=2, final_norm=False)
    options.update(overrides)
    return PatchEncoder(PatchConfig(**options))


def manual_patches(images: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, C*p*p), raster order, each patch flattened as (C, p, p)."""
    b, _, h, w = images.shape
    rows = []
    for r in range(h // p):
        for c in range(w // p):
            rows.append(images[:, :, r * p : (r + 1) * p, c * p : (c + 1) * p].reshape(b, -1))
    return torch.stack(rows, dim=1)


def test_patch_tokens_equal_manual_flattening_times_weight():
    torch.manual_seed(0)
    model = tiny(cls_token=False).eval()
    images = torch.randn(2, 3, 16, 12)  # non-square, and not the configured size
    with torch.no_grad():
        model.pos_embed.zero_()
        out = model(images)
    weight = model.patch_embed.weight.reshape(8, -1)
    want = manual_patches(images, 4) @ weight.T + model.patch_embed.bias
    assert out.tokens.shape == (2, 12, 8)
    torch.testing.assert_close(out.tokens, want, atol=1e-5, rtol=1e-5)
    assert out.mask.dtype == torch.bool and bool(out.mask.all())


def test_cls_token_and_positions():
    model = tiny().eval()
    images = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        out = model(images)
        patch = model.patch_embed(images).flatten(2).transpose(1, 2)
    torch.testing.assert_close(out.tokens[0, 0], model.cls_token[0, 0] + model.pos_embed[0, 0])
    torch.testing.assert_close(out.tokens[0, 1:], patch[0] + model.pos_embed[0, 1:])
    assert out.positions.shape == (1, 17, 2)
    assert out.positions[0, 0].tolist() == [-1.0, -1.0]
    # token 1 + r*4 + c is patch (r, c): centre ((r + .5) / 4, (c + .5) / 4)
    torch.testing.assert_close(out.positions[0, 1 + 2 * 4 + 3], torch.tensor([2.5 / 4, 3.5 / 4]))


def test_new_image_size_interpolates_learned_positions():
    torch.manual_seed(0)
    model = tiny().eval()
    with torch.no_grad():
        model.patch_embed.weight.zero_()
        model.patch_embed.bias.zero_()
        out = model(torch.randn(2, 3, 24, 16))  # grid 6 x 4 instead of 4 x 4
    # reference: bicubic resize of the (1, D, 4, 4) grid, [CLS] kept
    grid = model.pos_embed[0, 1:].reshape(4, 4, 8).permute(2, 0, 1)[None]
    resized = F.interpolate(grid, size=(6, 4), mode="bicubic", align_corners=False, antialias=True)
    want = torch.cat([model.pos_embed[0, :1], resized[0].permute(1, 2, 0).reshape(24, 8)])
    assert out.tokens.shape == (2, 25, 8)
    torch.testing.assert_close(out.tokens[1], want.detach() + model.cls_token[0] * torch.eye(25)[:, :1])


def test_resize_positions_is_permanent_and_matches_on_the_fly():
    torch.manual_seed(0)
    model = tiny(layers=1, final_norm=True).eval()
    images = torch.randn(1, 3, 20, 20)
    with torch.no_grad():
        on_the_fly = model(images).tokens
        model.resize_positions(20)
        permanent = model(images).tokens
    assert model.pos_embed.shape == (1, 26, 8)
    assert isinstance(model.pos_embed, torch.nn.Parameter)
    assert model.config.image_size == 20 and model.grid_size == (5, 5)
    torch.testing.assert_close(on_the_fly, permanent)
    with pytest.raises(ConfigError, match="multiple of"):
        model.resize_positions(22)


def test_sincos_positions_follow_the_grid():
    model = tiny(pos="sincos").eval()
    assert "pos_embed" not in model.state_dict()  # fixed: recomputed, never saved
    with torch.no_grad():
        model.patch_embed.weight.zero_()
        model.patch_embed.bias.zero_()
        out = model(torch.zeros(1, 3, 8, 12))
    from vlp.layers.positions import sincos_2d

    torch.testing.assert_close(out.tokens[0, 1:], sincos_2d((2, 3), 8))
    model.resize_positions(8)
    assert model.pos_embed.shape == (1, 5, 8)


def test_transformer_runs_and_accepts_a_batch():
    model = tiny(layers=2, pre_norm=True, final_norm=True, act="quick_gelu").eval()
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        from_tensor = model(images).tokens
        from_batch = model(Batch(images=images)).tokens
    torch.testing.assert_close(from_tensor, from_batch)
    # final LayerNorm without affine change: every token has zero mean, unit variance
    torch.testing.assert_close(from_tensor.mean(-1), torch.zeros(2, 17), atol=1e-5, rtol=0)
    assert "transformer.layers.1.attn.qkv.weight" in model.state_dict()


def test_bf16_autocast_smoke():
    torch.manual_seed(0)
    model = tiny(layers=1, final_norm=True).eval()
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = model(images).tokens
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(images).tokens
    assert torch.isfinite(low).all()
    torch.testing.assert_close(low.float(), ref, atol=0.1, rtol=0.05)


def test_config_from_dict_and_errors():
    cfg = from_dict(
        VisionConfig.member("patch"), {"type": "patch", "image_size": [16, 8], "patch_size": 4, "dim": 8, "layers": 0}
    )
    model = build(cfg)
    assert isinstance(model, PatchEncoder) and model.grid_size == (4, 2)
    with pytest.raises(ConfigError, match="multiple of patch.patch_size"):
        PatchConfig(image_size=30, patch_size=4)
    with pytest.raises(ConfigError, match="patch.act"):
        PatchConfig(act="swish")
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        tiny()(torch.zeros(1, 3, 15, 16))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        tiny()(torch.zeros(3, 16, 16))
    with pytest.raises(ValueError, match="no images"):
        tiny()(Batch())
