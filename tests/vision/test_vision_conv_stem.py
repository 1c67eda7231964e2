"""Patch encoder options for small images: the convolutional stem, ``dense: tokens`` and the model's
``image_pool: max``, each against a plain re-computation."""

import pytest
import torch
import torch.nn.functional as F

import vlp
from vlp.config import ConfigError
from vlp.core.outputs import VisualTokens
from vlp.vision import PatchConfig, PatchEncoder


def encoder(**overrides) -> PatchEncoder:
    options = dict(image_size=8, patch_size=4, dim=8, layers=1, heads=2, final_norm=False, cls_token=False)
    options.update(overrides)
    return PatchEncoder(PatchConfig(**options))


def test_conv_stem_is_conv_bn_relu_layers_before_the_patchify_conv():
    torch.manual_seed(0)
    model = encoder(conv_stem=[5, 6], layers=0).eval()
    with torch.no_grad():
        model.pos_embed.zero_()
        for bn in (model.stem.layers[1], model.stem.layers[4]):  # non-trivial running statistics
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    images = torch.randn(2, 3, 8, 8)
    x = images
    for conv, bn in ((model.stem.layers[0], model.stem.layers[1]), (model.stem.layers[3], model.stem.layers[4])):
        x = F.conv2d(x, conv.weight, padding=1)  # 3x3, stride 1, same size, no bias
        x = (x - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
        x = (x * bn.weight[:, None, None] + bn.bias[:, None, None]).clamp_min(0)
    want = F.conv2d(x, model.patch_embed.weight, model.patch_embed.bias, stride=4).flatten(2).transpose(1, 2)
    with torch.no_grad():
        out = model(images)
    assert model.patch_embed.in_channels == 6 and out.tokens.shape == (2, 4, 8)
    torch.testing.assert_close(out.tokens, want, atol=1e-5, rtol=1e-5)


def test_plain_vit_keeps_its_parameter_names_and_bad_options_are_refused():
    assert not any(k.startswith("stem.") for k in encoder().state_dict())  # timm/OpenCLIP imports still match
    assert any(k.startswith("stem.layers.0") for k in encoder(conv_stem=[4]).state_dict())
    with pytest.raises(ConfigError, match="conv_stem"):
        PatchConfig(image_size=8, patch_size=4, conv_stem=[4, 0])
    with pytest.raises(ConfigError, match="dense"):
        PatchConfig(image_size=8, patch_size=4, dense="keys")


def test_dense_tokens_are_the_final_patch_tokens():
    torch.manual_seed(0)
    model = encoder(cls_token=True, dense="tokens", final_norm=True).eval()
    images = torch.randn(2, 3, 8, 12)
    with torch.no_grad():
        dense, grid = model.dense_features(images)
        tokens = model(images).tokens
    assert grid == (2, 3)
    torch.testing.assert_close(dense, tokens[:, 1:])
    values = encoder(cls_token=True, final_norm=True).eval()
    values.load_state_dict(model.state_dict())
    with torch.no_grad():  # the default (MaskCLIP values) is a different map
        assert not torch.allclose(values.dense_features(images)[0], dense)


def test_image_pool_max_is_the_channelwise_max_of_kept_tokens():
    torch.manual_seed(0)
    model = vlp.create_model("albef-tiny", **{"model.image_pool": "max"}).eval()
    tokens = torch.randn(2, 5, 32)
    tokens[0, 4] = 100.0  # a masked-out token must not win the max
    mask = torch.tensor([[True, True, True, True, False], [True] * 5])
    with torch.no_grad():
        got = model._image_embed(VisualTokens(tokens=tokens, mask=mask))
        pooled = torch.stack([tokens[0, :4].max(0).values, tokens[1].max(0).values])
        want = F.normalize(model.image_proj(pooled), dim=-1)
    torch.testing.assert_close(got, want)


def test_conv_stem_in_training_matches_the_plain_layout_with_gradients():
    """The stem runs channels-last (faster kernels for few channels): batch statistics, outputs and the
    gradients of every weight and of the input equal those of the same layers run on plain NCHW tensors."""
    torch.manual_seed(0)
    model = encoder(conv_stem=[5, 6], layers=0).train()
    plain = encoder(conv_stem=[5, 6], layers=0).train()
    plain.load_state_dict(model.state_dict())
    images = torch.randn(3, 3, 8, 8)
    ours_in, plain_in = images.clone().requires_grad_(True), images.clone().requires_grad_(True)
    out = model.stem(ours_in)
    assert out.is_contiguous(memory_format=torch.channels_last)
    want = plain.stem.layers(plain_in.contiguous())  # the Sequential itself, on the NCHW layout
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    weights = torch.randn_like(want)
    (out * weights).sum().backward()
    (want * weights).sum().backward()
    torch.testing.assert_close(ours_in.grad, plain_in.grad, atol=1e-5, rtol=1e-5)
    for (name, a), (_, b) in zip(model.stem.named_parameters(), plain.stem.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-5, msg=name)
    for a, b in zip(model.stem.buffers(), plain.stem.buffers()):
        torch.testing.assert_close(a, b)
