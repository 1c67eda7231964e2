"""Training stream, control maps, box segmentation and IoU on hand-made and real ShapesWorld images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlp.data.shapesworld import COLORS, Background, Scene, SceneObject, render_layers, sample_scene
from vlp.generation.data import (
    ShapesDataConfig,
    ShapesStream,
    box_pixels,
    draw_scene,
    edge_map,
    layout_map,
    names_attribute,
    to_uint8,
    to_unit,
)
from vlp.generation.scoring import box_iou, object_box
from vlp.metrics import largest_component

BG = Background("light", "solid", (200, 200, 200), (200, 200, 200), 0.0, 0.0, 0)


def test_layout_map_fills_pixel_centres_inside_the_box():
    # a square with radius 0.25 at the centre: unit extent +-0.85 -> box [0.2875, 0.7125] * 16 = [4.6, 11.4]
    scene = Scene((SceneObject("square", "red", "large", 0.5, 0.5, 0.25),), BG)
    assert box_pixels(scene.objects[0].box(16), 16) == (5, 5, 11, 11)  # centres 5.5 .. 10.5 are inside
    out = layout_map(scene, 16)
    red = np.asarray(COLORS["red"]) / 255.0
    assert np.allclose(out[5:11, 5:11], red)
    assert out.sum() == pytest.approx(36 * red.sum(), rel=1e-6)


def test_edge_map_outlines_objects_and_ignores_the_background():
    noisy = Background("dark", "gradient", (30, 40, 30), (60, 50, 60), 0.3, 5.0, 1)
    scene = Scene((SceneObject("square", "blue", "large", 0.5, 0.5, 0.25),), noisy)
    edges = edge_map(render_layers(scene, 16))[:, :, 0]
    assert edges[:3].sum() == 0 and edges[:, :3].sum() == 0  # far from the object: no edges despite noise
    # the left side (x = 4.6 px: pixel 4 is half covered) is an edge; the interior is not
    assert edges[7, 3] > 0.4 and edges[7, 4] > 0.4 and edges[7, 7] == 0


def test_stream_batches_are_seeded_and_well_formed(tokenizer):
    cfg = ShapesDataConfig(image_size=16, max_objects=2, captions="attributes", seed=4)
    a = ShapesStream(cfg, tokenizer, control="layout").next_batch(3)
    b = ShapesStream(cfg, tokenizer, control="layout").next_batch(3)
    assert torch.equal(a.images, b.images) and a.captions == b.captions
    assert a.images.shape == (3, 3, 16, 16) and a.control.shape == (3, 3, 16, 16)
    assert float(a.images.min()) >= -1 and float(a.images.max()) <= 1
    assert all(names_attribute(c) for c in a.captions)
    assert a.attention_mask.dtype == torch.bool and a.input_ids.shape == a.attention_mask.shape


def test_names_attribute():
    assert names_attribute("There are two boxes.") and names_attribute("A violet shape.")
    assert not names_attribute("There is one object.")


def test_unit_round_trip():
    pixels = np.random.default_rng(0).integers(0, 256, (2, 5, 5, 3), dtype=np.uint8)
    assert np.array_equal(to_uint8(to_unit(pixels)), pixels)


def test_largest_component_and_box_on_a_hand_made_image():
    img = np.full((10, 10, 3), 200, dtype=np.uint8)
    img[2:5, 3:7] = COLORS["green"]  # 12 pixels
    img[8, 8] = COLORS["red"]  # a stray speck
    assert largest_component(np.zeros((3, 3), bool)).sum() == 0
    assert object_box(img) == (3, 2, 7, 5)
    assert object_box(np.full((4, 4, 3), 90, dtype=np.uint8)) is None
    # a background that drifted to a saturated tint is not taken for an object
    img[:] = (120, 60, 170)
    img[6:9, 1:3] = COLORS["yellow"]
    assert object_box(img) == (1, 6, 3, 9)


def test_box_iou():
    assert box_iou((0, 0, 4, 4), (0, 0, 4, 4)) == 1.0
    assert box_iou((0, 0, 4, 4), (2, 0, 6, 4)) == pytest.approx(8 / 24)
    assert box_iou((0, 0, 2, 2), (5, 5, 6, 6)) == 0.0
    assert box_iou(None, (0, 0, 1, 1)) == 0.0


def test_segmentation_finds_real_objects_at_their_layout_box():
    rng = np.random.default_rng(5)
    ious = []
    for _ in range(40):
        scene = sample_scene(rng, 1, 1)
        image = render_layers(scene, 32).image
        ious.append(box_iou(object_box(image), box_pixels(scene.objects[0].box(32), 32)))
    # anti-aliased edges and thin star points keep a few boxes a pixel short of the layout box
    assert np.mean(ious) > 0.8 and min(ious) > 0.3


def test_sizes_option_draws_only_the_asked_size_classes():
    # default: every class; the same rng stream as sample_scene without the option
    default = ShapesDataConfig(max_objects=1)
    picked = {draw_scene(default, np.random.default_rng(s))[0].objects[0].size for s in range(60)}
    assert picked == {"small", "medium", "large"}
    assert sample_scene(np.random.default_rng(3), 1, 1) == draw_scene(default, np.random.default_rng(3))[0]
    large = ShapesDataConfig(max_objects=1, sizes=["medium", "large"])
    picked = [draw_scene(large, np.random.default_rng(s))[0].objects[0].size for s in range(60)]
    assert set(picked) == {"medium", "large"}
    with pytest.raises(ValueError, match="sizes=\\['huge'\\]"):
        ShapesDataConfig(sizes=["huge"])
    with pytest.raises(ValueError, match="sizes=\\[\\]"):
        sample_scene(np.random.default_rng(0), 1, 1, sizes=[])
