"""Zero-shot perception: MaskCLIP dense features against a by-hand pass through the last layer,
thresholds and components on designed maps, a designed model whose heat map must find one patch,
and ``vlp eval perception`` end to end on a tiny ShapesWorld."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from grounding_helpers import make_world, read_json, train_tokenizer
from PIL import Image
from shapes_task_helpers import pretrained

import vlp
from vlp.cli import main
from vlp.config import ConfigError
from vlp.metrics import largest_component, mask_to_box
from vlp.tasks import perception
from vlp.text import Tokenizer


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return vlp.create_model("clip-tiny").eval(), Tokenizer.train(["a red circle", "a blue square"] * 4, 60)


def test_dense_features_are_the_last_layers_value_path(clip):
    model, _ = clip
    vision = model.vision
    images = torch.randn(2, 3, 32, 32)
    seen = {}
    hook = vision.transformer.layers[-1].register_forward_hook(lambda mod, args, out: seen.update(x=args[0]))
    with torch.no_grad():
        vision(images)  # the ordinary forward, to capture the last layer's input
        hook.remove()
        last, dim = vision.transformer.layers[-1], vision.dim
        h = F.layer_norm(seen["x"], (dim,), last.norm1.weight, last.norm1.bias, last.norm1.eps)
        v = h @ last.attn.qkv.weight[2 * dim :].T + last.attn.qkv.bias[2 * dim :]
        out = v @ last.attn.out.weight.T + last.attn.out.bias
        want = F.layer_norm(out, (dim,), vision.norm.weight, vision.norm.bias, vision.norm.eps)[:, 1:]  # no [CLS]
        got, grid = vision.dense_features(images)
    assert grid == (4, 4) and got.shape == (2, 16, dim)
    assert torch.allclose(got, want, atol=1e-5)


def test_otsu_components_and_boxes_on_designed_maps():
    values = np.array([0.0] * 30 + [10.0] * 10)
    t = perception.otsu_threshold(values)
    assert 0.0 <= t < 10.0 and (values > t).sum() == 10
    mask = np.zeros((6, 8), dtype=bool)
    mask[0, 0:3] = True  # 3 pixels
    mask[2:4, 4:7] = True  # 6 pixels: the largest
    mask[4, 3] = True  # touches the big blob only diagonally: not 4-connected
    big = largest_component(mask)
    assert big.sum() == 6 and not big[4, 3]
    assert mask_to_box(big) == (4.0, 2.0, 7.0, 4.0)
    flat = perception.threshold_mask(np.ones((3, 3)))  # nothing exceeds the threshold: the peak is kept
    assert flat.any()
    # center crop: a 2x2 map covers the centred 4x4 square of a 6x4 image; outside it holds the minimum
    heat = perception.heat_to_image(np.array([[0.0, 1.0], [2.0, 3.0]]), 6, 4, (1, 0, 5, 4))
    assert heat.shape == (4, 6) and (heat[:, 0] == 0).all() and (heat[:, 5] == 0).all() and heat[3, 4] == 3.0


def test_heat_map_of_a_designed_model_peaks_at_the_matching_patch(clip, monkeypatch, tmp_path):
    model, tok = copy.deepcopy(clip[0]), clip[1]
    with torch.no_grad():
        text = model.encode_text(tok(["a red circle"]).input_ids)[0]  # (16,)
        model.image_proj.weight.copy_(torch.cat([torch.eye(16), torch.zeros(16, 16)], dim=1))  # first 16 dims
    g = torch.Generator().manual_seed(0)
    features = torch.randn(1, 16, 32, generator=g)
    features[0, :, :16] -= 2 * text  # every patch points away from the text ...
    features[0, 6, :16] = 5 * text  # ... except patch (row 1, col 2), which matches it
    monkeypatch.setattr(model.vision, "dense_features", lambda images: (features.expand(len(images), -1, -1), (4, 4)))
    with torch.no_grad():
        grid = perception.dense_similarity(model, torch.zeros(1, 3, 32, 32), text[None])[0]
    assert grid[1, 2].item() == pytest.approx(1.0, abs=1e-5) and grid.flatten().argsort()[-2] != 6
    assert (grid.flatten()[torch.arange(16) != 6] < 0.5).all()
    image = Image.new("RGB", (64, 48), (30, 60, 90))  # squashed to 32x32: a patch is 16 x 12 pixels
    box, mask, heat = perception.locate_text(model, tok, image, "a red circle")
    assert heat.shape == (48, 64) and mask.shape == (48, 64)
    y, x = np.unravel_index(np.argmax(heat), heat.shape)
    assert 32 <= x < 48 and 12 <= y < 24  # the peak lies in that patch
    # the box covers the patch (16 x 12 pixels at x 32..48, y 12..24) and stays within half a patch of it
    assert box[0] <= 32 and box[1] <= 12 and box[2] >= 48 and box[3] >= 24
    assert box[0] >= 24 and box[1] >= 6 and box[2] <= 56 and box[3] <= 30
    path = perception.save_overlay(image, heat, tmp_path / "overlay.png", box)
    assert Image.open(path).size == (64, 48)


def test_perception_needs_a_patch_dual_encoder():
    with pytest.raises(ConfigError, match="dual-encoder"):
        perception.check_dense(vlp.create_model("vilt-tiny"))


def test_eval_perception_end_to_end(tmp_path):
    world = make_world(tmp_path, images=40)
    init = pretrained("zeroshot-clip-tiny", tmp_path / "pre", train_tokenizer(world, tmp_path / "tok"))
    out = tmp_path / "eval"
    rc = main(["eval", "perception", "--model", str(init), "--data", str(world), "--split", "train",
               "--out", str(out), "--overlays", "2"])  # fmt: skip
    assert rc == 0
    results = read_json(out / "results.json")
    predictions = read_json(out / "predictions.json")
    data = read_json(world / "annotations" / "instances_train.json")
    names = {c["id"]: c["name"] for c in data["categories"]}
    queries = {}
    for image in data["images"]:  # objects whose (colour, shape) is unique in their image
        anns = [a for a in data["annotations"] if a["image_id"] == image["id"]]
        keys = [f"{a['attributes']['color']} {names[a['category_id']]}" for a in anns]
        for a, key in zip(anns, keys):
            if keys.count(key) == 1:
                x, y, w, h = a["bbox"]
                queries[(image["id"], key)] = [x, y, x + w, y + h]
    assert results["metrics"]["n_queries"] == len(queries) == len(predictions)
    ious = []
    for p in predictions:
        t, b = queries[(p["image_id"], p["query"])], p["box"]
        assert p["target"] == pytest.approx(t)
        w = max(0.0, min(b[2], t[2]) - max(b[0], t[0]))
        h = max(0.0, min(b[3], t[3]) - max(b[1], t[1]))
        ious.append(w * h / ((b[2] - b[0]) * (b[3] - b[1]) + (t[2] - t[0]) * (t[3] - t[1]) - w * h))
    assert results["metrics"]["miou"] == pytest.approx(100 * np.mean(ious))
    assert results["metrics"]["accuracy"] == pytest.approx(100 * np.mean([v >= 0.5 for v in ious]))
    area = np.mean([(t[2] - t[0]) * (t[3] - t[1]) / 32**2 for t in queries.values()])
    assert results["chance"]["pointing"] == pytest.approx(100 * area)
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["000.png", "001.png"]
