"""ROIAlign against a naive loop reference of torchvision's C++ kernel, and hand-worked values."""

import math

import pytest
import torch

from vlp.layers.roi_align import roi_align


def bilinear(image: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """One bilinear sample of (C, H, W), written the way torchvision's C++ kernel does it."""
    _, height, width = image.shape
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return torch.zeros(image.shape[0], dtype=torch.float64)
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return (
        hy * hx * image[:, y_low, x_low]
        + hy * lx * image[:, y_low, x_high]
        + ly * hx * image[:, y_high, x_low]
        + ly * lx * image[:, y_high, x_high]
    )


def naive_roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned):
    """Loops over boxes, bins and samples; float64 throughout."""
    features = features.double()
    ph, pw = output_size
    out = torch.zeros(len(rois), features.shape[1], ph, pw, dtype=torch.float64)
    offset = 0.5 if aligned else 0.0
    for k, (b, x1, y1, x2, y2) in enumerate(rois.tolist()):
        sx, sy = x1 * spatial_scale - offset, y1 * spatial_scale - offset
        rw, rh = x2 * spatial_scale - offset - sx, y2 * spatial_scale - offset - sy
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bh, bw = rh / ph, rw / pw
        gh = sampling_ratio if sampling_ratio > 0 else math.ceil(rh / ph)
        gw = sampling_ratio if sampling_ratio > 0 else math.ceil(rw / pw)
        count = max(gh * gw, 1)
        for i in range(ph):
            for j in range(pw):
                total = torch.zeros(features.shape[1], dtype=torch.float64)
                for iy in range(gh):
                    y = sy + i * bh + (iy + 0.5) * bh / gh
                    for ix in range(gw):
                        x = sx + j * bw + (ix + 0.5) * bw / gw
                        total += bilinear(features[int(b)], y, x)
                out[k, :, i, j] = total / count
    return out


@pytest.fixture
def features():
    torch.manual_seed(0)
    return torch.randn(2, 3, 9, 11)


# (image, x1, y1, x2, y2) in pixels of a 2x-larger image (spatial_scale 0.5)
ROIS = torch.tensor(
    [
        [0, 0.0, 0.0, 21.9, 17.9],  # the whole map
        [0, 3.3, 2.7, 9.1, 7.4],  # fractional coordinates
        [0, -4.0, -3.0, 5.0, 6.0],  # sticks out top-left: samples in [-1, 0] and beyond
        [1, 15.0, 12.0, 25.0, 22.0],  # sticks out bottom-right
        [1, 6.2, 6.2, 6.9, 7.0],  # smaller than a cell
        [1, 1.0, 2.0, 14.0, 3.0],  # thin and wide
        [0, 10.0, 10.0, 10.0, 10.0],  # degenerate (zero size)
    ]
)


@pytest.mark.parametrize("sampling_ratio", [2, -1, 1])
@pytest.mark.parametrize("aligned", [True, False])
def test_matches_naive_reference(features, sampling_ratio, aligned):
    got = roi_align(features, ROIS, (3, 2), spatial_scale=0.5, sampling_ratio=sampling_ratio, aligned=aligned)
    want = naive_roi_align(features, ROIS, (3, 2), 0.5, sampling_ratio, aligned)
    assert got.shape == (len(ROIS), 3, 3, 2)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def test_list_of_boxes_equals_indexed_tensor(features):
    per_image = [ROIS[ROIS[:, 0] == 0, 1:], ROIS[ROIS[:, 0] == 1, 1:]]
    from_list = roi_align(features, per_image, 2, spatial_scale=0.5, sampling_ratio=2)
    ordered = torch.cat([ROIS[ROIS[:, 0] == 0], ROIS[ROIS[:, 0] == 1]])
    want = naive_roi_align(features, ordered, (2, 2), 0.5, 2, True)
    torch.testing.assert_close(from_list.double(), want, atol=1e-5, rtol=1e-5)


def test_ramp_image_hand_value():
    # f(y, x) = 10 y + x is linear, so a bin's average of symmetric bilinear samples
    # is f at the bin centre. Box (1, 1)-(5, 3) with aligned=True covers feature
    # coordinates x in [0.5, 4.5], y in [0.5, 2.5]; 2x2 bins of size 2x1 have centres
    # x in {1.5, 3.5}, y in {1.0, 2.0}.
    ys, xs = torch.meshgrid(torch.arange(6.0), torch.arange(7.0), indexing="ij")
    ramp = (10 * ys + xs)[None, None]
    out = roi_align(ramp, [torch.tensor([[1.0, 1.0, 5.0, 3.0]])], 2, sampling_ratio=2)
    expected = torch.tensor([[11.5, 13.5], [21.5, 23.5]])
    torch.testing.assert_close(out[0, 0], expected)
    adaptive = roi_align(ramp, [torch.tensor([[1.0, 1.0, 5.0, 3.0]])], 2, sampling_ratio=-1)
    torch.testing.assert_close(adaptive[0, 0], expected)


def test_gradient_reaches_features(features):
    features = features.clone().requires_grad_(True)
    roi_align(features, ROIS[:3], 2, spatial_scale=0.5).sum().backward()
    assert features.grad is not None
    assert features.grad[0].abs().sum() > 0
    assert features.grad[1].abs().sum() == 0  # no box above is on image 1


def test_bf16_features_keep_dtype(features):
    out = roi_align(features.bfloat16(), ROIS, 2, spatial_scale=0.5, sampling_ratio=2)
    assert out.dtype == torch.bfloat16
    want = naive_roi_align(features, ROIS, (2, 2), 0.5, 2, True)
    torch.testing.assert_close(out.double(), want, atol=0.05, rtol=0.05)


def test_no_boxes_and_bad_input(features):
    assert roi_align(features, torch.zeros(0, 5), 2).shape == (0, 3, 2, 2)
    with pytest.raises(ValueError, match="list of"):
        roi_align(features, torch.zeros(3, 4), 2)
    with pytest.raises(ValueError, match="image indices"):
        roi_align(features, torch.tensor([[2.0, 0, 0, 1, 1]]), 2)
    with pytest.raises(ValueError, match="box lists for 1 images"):
        roi_align(features, [torch.zeros(1, 4)], 2)
