"""Region encoder: box geometry, the summed embeddings, padding, ROIAlign-pooled regions."""

import pytest
import torch
import torch.nn.functional as F

from vlp.config import ConfigError, build, from_dict
from vlp.data.batch import Batch
from vlp.layers.roi_align import roi_align
from vlp.vision import RegionConfig, RegionEncoder, ResNetConfig, VisionConfig, box_geometry


def test_box_geometry_hand_worked():
    geometry = box_geometry(torch.tensor([[0.1, 0.2, 0.5, 0.8]]))
    # w = 0.5 - 0.1, h = 0.8 - 0.2, area = 0.4 * 0.6
    torch.testing.assert_close(geometry, torch.tensor([[0.1, 0.2, 0.5, 0.8, 0.4, 0.6, 0.24]]))


def test_tokens_are_summed_normalized_embeddings():
    torch.manual_seed(0)
    model = RegionEncoder(RegionConfig(feature_dim=6, dim=4, dropout=0.0)).eval()
    features = torch.randn(1, 2, 6)
    boxes = torch.tensor([[[0.1, 0.2, 0.5, 0.8], [0.0, 0.0, 1.0, 1.0]]])
    with torch.no_grad():
        out = model(Batch(region_features=features, region_boxes=boxes))
        geometry = torch.tensor([[0.1, 0.2, 0.5, 0.8, 0.4, 0.6, 0.24], [0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
        f = features[0] @ model.feature_proj.weight.T + model.feature_proj.bias
        g = geometry @ model.box_proj.weight.T + model.box_proj.bias
        want = F.layer_norm(f, (4,), eps=1e-12) + F.layer_norm(g, (4,), eps=1e-12)  # fresh LNs: weight 1, bias 0
    torch.testing.assert_close(out.tokens[0], want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.positions[0], geometry)
    assert out.mask.tolist() == [[True, True]]


def test_padded_regions_do_not_change_real_tokens():
    torch.manual_seed(0)
    model = RegionEncoder(RegionConfig(feature_dim=6, dim=8, layers=2, heads=2, dropout=0.0)).eval()
    features = torch.randn(2, 3, 6)
    boxes = torch.rand(2, 3, 2) * 0.5
    boxes = torch.cat([boxes, boxes + 0.3], dim=-1)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    padded_features = torch.cat([features, torch.randn(2, 2, 6) * 100], dim=1)
    padded_boxes = torch.cat([boxes, torch.full((2, 2, 4), 7.0)], dim=1)  # garbage, even out of range
    padded_mask = torch.cat([mask, torch.zeros(2, 2, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        short = model(Batch(region_features=features, region_boxes=boxes, region_mask=mask))
        long = model(Batch(region_features=padded_features, region_boxes=padded_boxes, region_mask=padded_mask))
        # image 1 alone with its two real regions: the masked third must not matter either
        alone = model(Batch(region_features=features[1:, :2], region_boxes=boxes[1:, :2]))
    torch.testing.assert_close(long.tokens[:, :3], short.tokens, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(short.tokens[1, :2], alone.tokens[0], atol=1e-5, rtol=1e-5)
    assert torch.equal(long.tokens[:, 3:], torch.zeros(2, 2, 8))
    assert torch.equal(short.tokens[1, 2], torch.zeros(8))


def test_roi_align_source_pools_each_kept_box():
    torch.manual_seed(0)
    backbone = ResNetConfig(depths=[1, 1], widths=[4, 6], stem_width=4, frozen_bn=True)
    model = RegionEncoder(RegionConfig(source="roi_align", backbone=backbone, dim=8, roi_output_size=2, dropout=0.0))
    images = torch.randn(2, 3, 32, 48)
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.25, 0.1, 1.0, 0.9]], [[0.5, 0.5, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]])
    mask = torch.tensor([[True, True], [True, False]])
    pooled = model.pool_features(images, boxes, mask)
    assert pooled.shape == (2, 2, 6)
    with torch.no_grad():
        fmap = model.backbone(images)  # stride 8
        for b, r in [(0, 0), (0, 1), (1, 0)]:
            pixel_box = boxes[b, r] * torch.tensor([48.0, 32.0, 48.0, 32.0])
            want = roi_align(fmap[b : b + 1], [pixel_box[None]], 2, spatial_scale=1 / 8).mean(dim=(2, 3))[0]
            torch.testing.assert_close(pooled[b, r], want, atol=1e-5, rtol=1e-5)
    assert torch.equal(pooled[1, 1], torch.zeros(6))
    out = model(Batch(images=images, region_boxes=boxes, region_mask=mask))
    assert out.tokens.shape == (2, 2, 8) and out.positions.shape == (2, 2, 7)
    out.tokens.sum().backward()
    assert model.backbone.conv1.weight.grad is not None  # trained end to end through ROIAlign


def test_region_errors_and_config():
    model = build(from_dict(VisionConfig.member("region"), {"type": "region", "feature_dim": 6, "dim": 4}))
    assert isinstance(model, RegionEncoder)
    with pytest.raises(TypeError, match="needs a Batch"):
        model(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="no region_boxes"):
        model(Batch(region_features=torch.zeros(1, 2, 6)))
    with pytest.raises(ValueError, match="look like pixels"):
        model(Batch(region_features=torch.zeros(1, 1, 6), region_boxes=torch.tensor([[[10.0, 10.0, 50.0, 60.0]]])))
    with pytest.raises(ValueError, match=r"\(B, R, 6\)"):
        model(Batch(region_features=torch.zeros(1, 1, 5), region_boxes=torch.zeros(1, 1, 4)))
    with pytest.raises(ConfigError, match="backbone: required"):
        RegionConfig(source="roi_align")
