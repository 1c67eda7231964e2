"""ShapesWorld scenes, rendering, hold-out pairs and reproducibility of the whole folder."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from vlp.config import ConfigError
from vlp.data.shapesworld import (
    COLORS,
    SHAPES,
    Scene,
    SceneObject,
    choose_holdout_pairs,
    generate,
    relation_holds,
    render_layers,
    render_scene,
    sample_scene,
    scene_of,
    split_counts,
)
from vlp.data.shapesworld.scene import Background

PLAIN = Background("light", "solid", (200, 200, 200), (200, 200, 200), 0.0, 0.0, 0)


def one(shape: str, cx: float = 0.5, cy: float = 0.5, radius: float = 0.25, color: str = "red") -> Scene:
    return Scene((SceneObject(shape, color, "large", cx, cy, radius),), PLAIN)


@pytest.mark.parametrize(
    "shape, area",  # hand-worked areas in units of radius^2
    [
        ("circle", math.pi),
        ("square", 1.7**2),
        ("triangle", 0.5 * 2 * 1.8),
        ("diamond", 0.5 * 1.5 * 2),
        ("cross", 2 * (2 * 0.34 * 2) - (2 * 0.34) ** 2),  # two bars minus their shared centre
        ("star", 10 * 0.5 * 1.0 * 0.45 * math.sin(math.radians(36))),  # ten triangles around the centre
    ],
)
def test_rendered_area_and_extent_match_the_geometry(shape: str, area: float) -> None:
    size, radius = 96, 0.3
    rendered = render_layers(one(shape, radius=radius), size)
    alpha = rendered.alphas[0]
    assert alpha.sum() == pytest.approx(area * (radius * size) ** 2, rel=0.01)
    # anti-aliased: edge pixels are partly covered and blend red into the grey background
    assert ((alpha > 0.05) & (alpha < 0.95)).sum() > 20
    edge = rendered.image[(alpha > 0.3) & (alpha < 0.7)]
    assert len(edge) and np.all((edge[:, 0] > 200) & (edge[:, 1] < 200) & (edge[:, 1] > 38))
    ys, xs = np.nonzero(alpha > 0.5)
    x0, y0, x1, y1 = one(shape, radius=radius).objects[0].box(size)
    assert np.allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], [x0, y0, x1, y1], atol=1.5)
    # interior pixels are exactly the palette colour (PNG keeps them exact)
    assert np.all(rendered.image[alpha == 1.0] == COLORS["red"])


def test_square_box_is_pixel_exact() -> None:
    # a square from pixel 8 to 24 (half-extent 0.85 r): columns 8..23 full, 7 and 24 empty
    r = 8 / 0.85 / 32
    image = render_scene(one("square", cx=0.5, cy=0.5, radius=r), 32)
    red = np.all(image == COLORS["red"], axis=-1)
    ys, xs = np.nonzero(red)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (8, 23, 8, 23) and red.sum() == 16 * 16


def test_sampled_scenes_respect_counts_exclusions_and_do_not_overlap() -> None:
    held = [("circle", "red"), ("star", "blue")]
    counts = []
    for seed in range(150):
        rng = np.random.default_rng(seed)
        scene = sample_scene(rng, min_objects=2, max_objects=5, exclude=held)
        counts.append(len(scene.objects))
        assert not {(o.shape, o.color) for o in scene.objects} & set(held)
        alphas = render_layers(scene, 64).alphas
        assert (alphas.sum(0) <= 1.0 + 1e-6).all()  # no pixel covered by two objects
        for o in scene.objects:
            x0, y0, x1, y1 = o.box()
            assert 0 < x0 < x1 < 1 and 0 < y0 < y1 < 1
        required = sample_scene(np.random.default_rng(seed), require=held)
        assert {(o.shape, o.color) for o in required.objects} & set(held)
    # a crowded image may place fewer than drawn, but never more and rarely fewer than the minimum
    assert max(counts) == 5 and min(counts) >= 1 and np.mean(np.asarray(counts) >= 2) > 0.95


def test_scene_sampling_varies_attributes_backgrounds_and_counts() -> None:
    scenes = [sample_scene(np.random.default_rng(s)) for s in range(300)]
    objs = [o for s in scenes for o in s.objects]
    assert {o.shape for o in objs} == set(SHAPES) and {o.color for o in objs} == set(COLORS)
    assert {o.size for o in objs} == {"small", "medium", "large"}
    assert {len(s.objects) for s in scenes} == {1, 2, 3, 4}
    assert {(s.background.tone, s.background.kind) for s in scenes} == {
        (t, k) for t in ("light", "dark") for k in ("solid", "gradient")
    }
    assert any(s.background.noise > 0 for s in scenes) and any(s.background.noise == 0 for s in scenes)


def test_relations_are_mirrored_by_a_horizontal_flip() -> None:
    for seed in range(50):
        scene = sample_scene(np.random.default_rng(seed), min_objects=3)
        mirror = [SceneObject(o.shape, o.color, o.size, 1 - o.cx, o.cy, o.radius) for o in scene.objects]
        for a in range(len(mirror)):
            for b in range(len(mirror)):
                left = relation_holds(scene.objects[a], scene.objects[b], "left of")
                assert left == relation_holds(mirror[a], mirror[b], "right of")
                assert relation_holds(scene.objects[a], scene.objects[b], "above") == relation_holds(
                    mirror[a], mirror[b], "above"
                )


def test_render_is_deterministic_and_resolution_independent() -> None:
    scene = sample_scene(np.random.default_rng(3))
    assert np.array_equal(render_scene(scene, 64), render_scene(Scene.from_dict(scene.to_dict()), 64))
    small, big = render_layers(scene, 64), render_layers(scene, 256)
    for k, o in enumerate(scene.objects):
        # the same object covers the same fraction of the image at any size
        assert small.alphas[k].sum() / 64**2 == pytest.approx(big.alphas[k].sum() / 256**2, rel=0.05)
        assert o.box(256) == pytest.approx(tuple(4 * v for v in o.box(64)))


def test_holdout_pairs_spread_over_shapes_and_colours() -> None:
    pairs = choose_holdout_pairs(0, 0.12)
    assert pairs == choose_holdout_pairs(0, 0.12) and len(pairs) == round(0.12 * 42)
    assert len({s for s, _ in pairs}) == len(pairs) == len({c for _, c in pairs})  # one per shape and colour
    assert any(choose_holdout_pairs(seed, 0.12) != pairs for seed in range(1, 5))
    many = choose_holdout_pairs(1, 0.3)  # 13 pairs: at most 3 per shape, 2 per colour
    assert max(sum(s == x for s, _ in many) for x in SHAPES) <= 3
    assert max(sum(c == x for _, c in many) for x in COLORS) <= 2
    assert choose_holdout_pairs(0, 0.0) == []


def test_split_counts() -> None:
    assert split_counts(10_000, (0.8, 0.1, 0.1), 0.1) == {"train": 7200, "val": 900, "test": 900, "holdout": 1000}
    # 5.6, 0.7, 0.7: floors 5, 0, 0 and the two spare images go to the largest remainders
    assert split_counts(7, (0.8, 0.1, 0.1), 0.0) == {"train": 5, "val": 1, "test": 1, "holdout": 0}
    assert sum(split_counts(101, (0.5, 0.3, 0.2), 0.13).values()) == 101


def folder_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path: Path) -> None:
    a = folder_bytes(Path(generate(tmp_path / "a", images=30, size=32, seed=7, shard_size=10, workers=1)["out_dir"]))
    b = folder_bytes(Path(generate(tmp_path / "b", images=30, size=32, seed=7, shard_size=10, workers=1)["out_dir"]))
    assert a == b and len(a) > 30 + 30 + 15
    c = folder_bytes(Path(generate(tmp_path / "c", images=30, size=32, seed=8, shard_size=10, workers=1)["out_dir"]))
    assert a.keys() == c.keys()
    differ = [k for k in a if a[k] != c[k]]
    assert "annotations/dataset_shapes.json" in differ and "images/train/0000001.png" in differ
    assert sum(k.startswith("images/") for k in differ) >= 28  # practically every image


@pytest.mark.slow
def test_two_worker_processes_write_the_same_bytes(tmp_path: Path) -> None:
    one_proc = generate(tmp_path / "one", images=60, size=32, seed=2, workers=1)
    two_proc = generate(tmp_path / "two", images=60, size=32, seed=2, workers=2)
    assert two_proc["workers"] == 2
    assert folder_bytes(Path(one_proc["out_dir"])) == folder_bytes(Path(two_proc["out_dir"]))


def test_scene_of_recreates_each_written_image(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    generate(out, images=20, size=32, seed=4, workers=1, formats=("coco",))
    meta = json.loads((out / "meta.json").read_text())
    coco = json.loads((out / "annotations" / "instances_train.json").read_text())
    image_id = coco["images"][0]["id"]
    scene = scene_of(meta, image_id)
    boxes = [a["bbox"] for a in coco["annotations"] if a["image_id"] == image_id]
    expected = [[x0, y0, x1 - x0, y1 - y0] for x0, y0, x1, y1 in (o.box(32) for o in scene.objects)]
    assert np.allclose(boxes, expected, atol=0.01)
    from PIL import Image

    png = np.asarray(Image.open(out / "images" / "train" / coco["images"][0]["file_name"]))
    assert np.array_equal(png, render_scene(scene, 32))
    assert not (out / "shards").exists() and not (out / "regions").exists()  # only the formats asked for


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"images": 0}, "images"),
        ({"seed": -1}, "seed"),
        ({"size": 4}, "size"),
        ({"splits": (0.5, 0.2)}, "splits"),
        ({"holdout_pairs": 0.9}, "holdout_pairs"),
        ({"min_objects": 3, "max_objects": 2}, "min_objects"),
        ({"shard_size": 20_000}, "shard_size"),
        ({"formats": ("coco", "kitti")}, "formats"),
    ],
)
def test_bad_options_name_the_key(tmp_path: Path, kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        generate(tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()


def test_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    generate(out, images=8, size=16, seed=0, workers=1, formats=())
    with pytest.raises(ConfigError, match="not empty"):
        generate(out, images=8, size=16, seed=0, workers=1, formats=())
    (out / "mine.txt").write_text("keep me")
    generate(out, images=4, size=16, seed=0, workers=1, formats=(), overwrite=True)
    assert len(list((out / "images").rglob("*.png"))) == 4 and (out / "mine.txt").read_text() == "keep me"
    other = tmp_path / "other"
    other.mkdir()
    (other / "data.csv").write_text("x")
    with pytest.raises(ConfigError, match="meta.json"):
        generate(other, images=4, size=16, overwrite=True)
