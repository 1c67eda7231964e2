"""Referring expressions: the two heads, their losses and the IoU plumbing on hand-worked cases."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import refexp_helpers as case
import torch
from PIL import Image
from refexp_helpers import iou, refexp_tokenizer, text_fields
from torch import nn

import vlp
from vlp.config import ConfigError
from vlp.data.batch import Batch
from vlp.data.config import TransformConfig
from vlp.data.transforms import eval_geometry
from vlp.metrics import elementwise_box_iou
from vlp.tasks import refexp
from vlp.tasks.common import preprocess_images
from vlp.text import Tokenizer

# evaluate() looks its helpers up in its own module (the package re-exports the function of the same name)
refexp_evaluate = importlib.import_module("vlp.tasks.refexp.evaluate")


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return refexp_tokenizer()


def generalized_iou(a, b) -> float:
    """Plain-Python GIoU: IoU minus the share of the enclosing box that neither box covers."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return w * h / union - (hull - union) / hull


class DesignedScores(nn.Module):
    """A region_score head that ignores its input and returns fixed logits ``(B, R, 1)``."""

    def __init__(self, scores: list[list[float]]) -> None:
        super().__init__()
        self.scores = torch.tensor(scores)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        assert tokens.shape[:2] == self.scores.shape  # one fused token per region, prefix dropped
        return self.scores[..., None]


def test_box_regression_loss_is_l1_plus_giou_by_hand():
    pred = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0]])
    target = torch.tensor([[1.0, 1.0, 3.0, 3.0], [1.0, 1.0, 3.0, 3.0]])
    # pair 1: L1 = 4; IoU = 1/7, enclosing box 9, union 7 -> GIoU = 1/7 - 2/9 = -5/63; pair 2: both 0
    loss, terms = refexp.box_regression_loss(pred, target, l1_weight=5.0, giou_weight=2.0)
    assert terms["l1"].item() == pytest.approx(2.0)
    assert terms["giou"].item() == pytest.approx((1 + 5 / 63) / 2)
    assert loss.item() == pytest.approx(5 * 2.0 + 2 * (1 + 5 / 63) / 2)


def test_box_regressor_trains_the_box_head_on_the_fused_cls(tok):
    torch.manual_seed(0)
    model = vlp.create_model("vilt-tiny")
    refexp.ensure_refexp_head(model, "box")
    assert model.cfg.heads["box"] == {}  # the saved recipe rebuilds the head
    target = torch.tensor([[0.1, 0.2, 0.5, 0.6], [0.5, 0.5, 0.9, 1.0]])
    batch = Batch(images=torch.randn(2, 3, 32, 32), target_boxes=target,
                  **text_fields(tok, ["the red circle", "a big star"]))  # fmt: skip
    loss, logs = refexp.BoxRegressor(model, 5.0, 2.0)(batch)
    with torch.no_grad():
        fused = model.fuse(model.text_tokens(batch.input_ids, batch.attention_mask), batch.attention_mask,
                           model.image_tokens(batch))  # fmt: skip
        pred = model.heads["box"](fused.pooled)
    want_l1 = sum((pred[i] - batch.target_boxes[i]).abs().sum().item() for i in range(2)) / 2
    giou = [generalized_iou(p, t) for p, t in zip(pred.tolist(), batch.target_boxes.tolist())]
    assert logs["l1"] == pytest.approx(want_l1, rel=1e-5)
    assert logs["giou"] == pytest.approx(sum(1 - g for g in giou) / 2, rel=1e-5)
    assert loss.item() == pytest.approx(5 * want_l1 + 2 * sum(1 - g for g in giou) / 2, rel=1e-5)
    loss.backward()
    assert model.heads["box"].out.weight.grad.abs().sum() > 0


def region_model(scores: list[list[float]]) -> nn.Module:
    torch.manual_seed(0)
    model = vlp.create_model("uniter-tiny")
    refexp.ensure_refexp_head(model, "regions", hidden=16)
    assert model.cfg.heads["region_score"] == {"hidden": 16}
    model.heads["region_score"] = DesignedScores(scores)
    return model


def test_region_scoring_picks_the_best_score_and_targets_the_best_iou_region(tok):
    assert refexp.region_targets(case.BOXES, case.KEEP, case.TARGET).tolist() == case.BEST
    model = region_model(case.SCORES)
    batch = Batch(region_features=torch.randn(2, 3, 64), **case.candidate_fields(),
                  **text_fields(tok, ["the red circle", "the small blue square on the left"]))  # fmt: skip
    assert torch.equal(refexp.predict_normalized(model, batch, "regions"), case.EXPECTED_PICK)
    loss, logs = refexp.RegionScorer(model)(batch)
    assert loss.item() == pytest.approx(case.EXPECTED_LOSS, rel=1e-6)
    assert logs["acc"] == pytest.approx(case.EXPECTED_ACC)


def test_evaluate_reports_iou_accuracy_of_designed_boxes(tok, monkeypatch):
    targets = [[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.2, 0.2, 0.6, 0.6]]
    preds = [[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.25], [0.5, 0.5, 0.75, 0.75], [0.6, 0.6, 0.8, 0.8]]
    ious = [iou(p, t) for p, t in zip(preds, targets)]
    assert ious == pytest.approx([1.0, 0.5, 0.25, 0.0])  # 0.5 exactly counts as a hit
    samples = [{"image": torch.zeros(3, 32, 32), "text": "the red circle", "target_box": torch.tensor(t),
                "meta": {"k": k, "ref_id": 10 + k, "sent_id": 20 + k}} for k, t in enumerate(targets)]  # fmt: skip
    monkeypatch.setattr(
        refexp_evaluate,
        "predict_normalized",
        lambda model, batch, mode: torch.tensor([preds[m["k"]] for m in batch.meta]),
    )
    model = vlp.create_model("vilt-tiny")
    refexp.ensure_refexp_head(model, "box")
    out = refexp.evaluate(model, tok, samples, batch_size=3, keep_predictions=True)
    assert out["accuracy"] == pytest.approx(50.0) and out["miou"] == pytest.approx(100 * 1.75 / 4)
    assert out["n_expressions"] == 4 and out["mode"] == "box"
    # chance: the mean target size (0.475 x 0.475) centred in the image
    half = 0.475 / 2
    centre = [0.5 - half, 0.5 - half, 0.5 + half, 0.5 + half]
    centre_ious = [iou(centre, t) for t in targets]
    assert out["chance"]["miou"] == pytest.approx(100 * sum(centre_ious) / 4)
    assert out["chance"]["accuracy"] == pytest.approx(100 * sum(v >= 0.5 for v in centre_ious) / 4)
    assert [p["ref_id"] for p in out["predictions"]] == [10, 11, 12, 13]
    assert [p["iou"] for p in out["predictions"]] == pytest.approx(ious)


class _Indexed(list):
    """Samples plus the index records they came from, as a VLDataset offers them to evaluate."""

    def __init__(self, samples: list, records: list) -> None:
        super().__init__(samples)
        self.index = type("Index", (), {"records": records})()


def test_evaluate_counts_a_pixel_iou_of_exactly_one_half_as_a_hit(tok, monkeypatch):
    # a 333 x 217 image; target 80 x 30 px, the picked candidate its left half: IoU = 1200 / 2400 = 0.5
    # exactly, as RefCOCO's evaluation computes it in pixels; through float32 normalized boxes it is 0.49999994
    width, height, target, half = 333, 217, [3.0, 5.0, 83.0, 35.0], [3.0, 5.0, 43.0, 35.0]
    assert iou(half, target) == 0.5

    def normalized(box):
        return torch.tensor([box[0] / width, box[1] / height, box[2] / width, box[3] / height])

    assert elementwise_box_iou(normalized(half), normalized(target)).item() < 0.5
    records = [{"width": width, "height": height, "target_box": target, "boxes": [target, half]}]
    samples = [{"image": torch.zeros(3, 32, 32), "text": "the red circle", "target_box": normalized(target),
                "meta": {"index": 0, "ref_id": 1}}]  # fmt: skip
    monkeypatch.setattr(refexp_evaluate, "predict_normalized", lambda model, batch, mode: normalized(half)[None])
    model = vlp.create_model("vilt-tiny")
    refexp.ensure_refexp_head(model, "box")
    out = refexp.evaluate(model, tok, _Indexed(samples, records), keep_predictions=True)
    assert out["accuracy"] == 100.0 and out["predictions"][0]["iou"] == 0.5
    assert out["predictions"][0]["box"] == half


def test_view_box_to_pixels_follows_the_eval_transform():
    box = (0.5, 0.25, 1.0, 1.0)
    assert refexp.view_box_to_pixels(box, (0, 0, 64, 48)) == pytest.approx([32, 12, 64, 48])
    # center: the model saw the centred 48 x 48 square, which starts at x = 8
    center = eval_geometry(48, TransformConfig(eval_crop="center")).view(64, 48)
    assert refexp.view_box_to_pixels(box, center) == pytest.approx([32, 12, 56, 48])
    # a 4:3 image at 7 px: resized to 9 x 7 (int(7 * 64 / 48)), crop offset (9 - 7) // 2 = 1 resized pixel,
    # i.e. 64 / 9 original pixels; the view spans 7 resized pixels = 7 * 64 / 9
    left, top, right, bottom = eval_geometry(7, TransformConfig(eval_crop="center")).view(64, 48)
    assert (left, top, right, bottom) == pytest.approx((64 / 9, 0, 8 * 64 / 9, 48))
    assert refexp.pixels_to_view_box(
        refexp.view_box_to_pixels(box, (left, top, right, bottom)), (left, top, right, bottom)
    ) == pytest.approx(list(box))


def test_locate_returns_pixels_for_box_and_region_models(tok, tmp_path):
    torch.manual_seed(0)
    model = vlp.create_model("vilt-tiny")
    refexp.ensure_refexp_head(model, "box")
    model.eval()
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    box = refexp.locate(model, tok, image, "the red circle")
    batch = Batch(images=preprocess_images([image], model.recipe.data), **text_fields(tok, ["the red circle"]))
    with torch.no_grad():
        fused = model.fuse(model.text_tokens(batch.input_ids, batch.attention_mask), batch.attention_mask,
                           model.image_tokens(batch))  # fmt: skip
        want = model.heads["box"](fused.pooled)[0] * torch.tensor([64, 48, 64, 48])
    assert box == pytest.approx(want.tolist(), rel=1e-5)
    # a region model reads the image's region file and answers with the best region's pixel box
    pixels = np.array([[0, 0, 10, 10], [20, 4, 30, 20], [5, 5, 25, 25]], dtype=np.float32)
    np.savez(tmp_path / "r.npz", features=np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32),
             boxes=pixels, image_w=np.int64(40), image_h=np.int64(30))  # fmt: skip
    regional = region_model([[0.0, 3.0, 1.0]])
    assert refexp.locate(regional, tok, None, "the red circle", regions=tmp_path / "r.npz") == pytest.approx(
        pixels[1].tolist(), abs=1e-4)  # fmt: skip
    with pytest.raises(ValueError, match="regions="):
        refexp.locate(regional, tok, None, "the red circle")


def test_modes_and_missing_heads_are_refused(tok):
    with pytest.raises(ConfigError, match="fusion module"):
        refexp.resolve_mode(vlp.create_model("clip-tiny"))
    vilt = vlp.create_model("vilt-tiny")
    assert refexp.resolve_mode(vilt) == "proposals"  # candidate boxes come with RefCOCO-format data
    with pytest.raises(ConfigError, match="region"):
        refexp.resolve_mode(vilt, "regions")
    with pytest.raises(ConfigError, match="no proposal_score head"):
        refexp.evaluate(vilt, tok, [])
    with pytest.raises(ConfigError, match="no box head"):
        refexp.evaluate(vilt, tok, [], mode="box")
    refexp.ensure_refexp_head(vilt, "box")
    assert refexp.trained_mode(vilt) == "box"  # auto: the head a model was fine-tuned with
    with pytest.raises(ValueError, match="one expression per image"):
        refexp.predict(vilt, tok, [Image.new("RGB", (8, 8))], ["a", "b"])
