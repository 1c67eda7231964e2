"""2-D sin-cos embeddings, grid coordinates and position-embedding interpolation."""

import math

import pytest
import torch
import torch.nn.functional as F

from vlp.layers.positions import grid_positions, pair, resize_grid_embedding, sincos_2d


def test_sincos_2d_matches_formula():
    h, w, dim = 3, 4, 8
    quarter = dim // 4
    table = sincos_2d((h, w), dim)
    assert table.shape == (h * w, dim)
    for r in range(h):
        for c in range(w):
            want = []
            for value in (c, r):  # first half: column, second half: row (MAE layout)
                freqs = [1.0 / 10000 ** (i / quarter) for i in range(quarter)]
                want += [math.sin(value * f) for f in freqs] + [math.cos(value * f) for f in freqs]
            torch.testing.assert_close(table[r * w + c], torch.tensor(want), atol=1e-6, rtol=0)


def test_sincos_2d_prefix_and_bad_dim():
    table = sincos_2d(2, 4, num_prefix_tokens=1)
    assert table.shape == (5, 4)
    assert torch.equal(table[0], torch.zeros(4))
    # cell (0, 0): sin(0) = 0, cos(0) = 1 for both axes
    torch.testing.assert_close(table[1], torch.tensor([0.0, 1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d(2, 6)


def test_grid_positions_are_cell_centres_in_raster_order():
    pos = grid_positions((2, 4))
    expected = torch.tensor([[0.25, c] for c in (0.125, 0.375, 0.625, 0.875)] + [[0.75, c] for c in (0.125, 0.375)])
    torch.testing.assert_close(pos[:6], expected)
    assert pos.shape == (8, 2)
    assert bool((pos > 0).all() and (pos < 1).all())


def test_resize_to_same_size_is_identity():
    table = torch.randn(1, 1 + 9, 6)
    assert resize_grid_embedding(table, 3, (3, 3), num_prefix_tokens=1) is table


@pytest.mark.parametrize("new_grid", [(5, 5), (2, 3), (4, 6)])
def test_resize_matches_bicubic_of_reshaped_grid(new_grid):
    torch.manual_seed(0)
    old_h, old_w, dim = 3, 4, 5
    table = torch.randn(2 + old_h * old_w, dim)  # two prefix tokens
    got = resize_grid_embedding(table, (old_h, old_w), new_grid, num_prefix_tokens=2, antialias=False)
    # reference: token r*w + c of the grid is pixel (r, c) of a D-channel image
    image = torch.zeros(1, dim, old_h, old_w)
    for r in range(old_h):
        for c in range(old_w):
            image[0, :, r, c] = table[2 + r * old_w + c]
    resized = F.interpolate(image, size=new_grid, mode="bicubic", align_corners=False)
    want = [table[0], table[1]]
    want += [resized[0, :, r, c] for r in range(new_grid[0]) for c in range(new_grid[1])]
    torch.testing.assert_close(got, torch.stack(want))


def test_resize_keeps_constant_grid_and_batched_layout():
    table = torch.full((1, 16, 3), 0.7)
    out = resize_grid_embedding(table, 4, 7)
    assert out.shape == (1, 49, 3)
    torch.testing.assert_close(out, torch.full((1, 49, 3), 0.7))
    with pytest.raises(ValueError, match="prefix tokens"):
        resize_grid_embedding(table, 3, 4)


def test_pair_errors():
    assert pair(5) == (5, 5)
    assert pair([3, 4]) == (3, 4)
    with pytest.raises(ValueError, match="image_size"):
        pair("224", "image_size")
