"""Referring expressions by candidate-box scoring (``mode: proposals``) on hand-worked cases: the token
map rebuilt from positions, ROIAlign pooling against a naive crop average, the choice of the best-IoU
candidate, the cross-entropy, the uniform-candidate chance level and the predict API."""

from __future__ import annotations

import pytest
import refexp_helpers as case
import torch
from PIL import Image
from refexp_helpers import iou, refexp_tokenizer, text_fields
from torch import nn

import vlp
from vlp.config import ConfigError
from vlp.data.batch import Batch
from vlp.layers.positions import grid_positions
from vlp.tasks import refexp
from vlp.tasks.refexp.proposals import box_geometry, grid_shape, pool_candidates, proposal_scores, token_map
from vlp.text import Tokenizer


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return refexp_tokenizer()


def test_token_map_puts_every_token_in_its_cell_and_drops_the_prefix():
    h, w, dim = 3, 4, 5
    cells = torch.randn(2, h * w, dim)
    prefix = torch.full((2, 1, dim), 99.0)  # a [CLS] token at position (-1, -1) must not land anywhere
    positions = torch.cat([torch.full((2, 1, 2), -1.0), grid_positions((h, w)).expand(2, -1, -1)], dim=1)
    out = token_map(torch.cat([prefix, cells], dim=1), positions, (h, w))
    assert out.shape == (2, dim, h, w)
    for r in range(h):
        for c in range(w):
            torch.testing.assert_close(out[:, :, r, c], cells[:, r * w + c])
    # a sampled subset (Pixel-BERT's pixel sampling): missing cells stay zero
    keep = [0, 5, 11]
    sparse = token_map(cells[:, keep], positions[:, 1:][:, keep], (h, w))
    assert sparse.flatten(2).abs().sum(1).nonzero()[:, 1].unique().tolist() == keep


def test_pooled_candidate_equals_a_naive_crop_average():
    torch.manual_seed(0)
    features = torch.randn(1, 6, 4, 4)  # (B, D, h, w)
    # the box covers cells x in [1, 3), y in [0, 2) of the 4x4 map exactly
    box = torch.tensor([[[0.25, 0.0, 0.75, 0.5]]])
    one = pool_candidates(features, box, cells=1)
    torch.testing.assert_close(one[0, 0], features[0, :, 0:2, 1:3].mean(dim=(1, 2)))
    # 2x2 bins of a 2x2-cell box: every bin is one cell, in (D, row, col) order
    two = pool_candidates(features, box, cells=2)
    torch.testing.assert_close(two[0, 0], features[0, :, 0:2, 1:3].reshape(-1))
    geometry = box_geometry(box)
    torch.testing.assert_close(geometry[0, 0], torch.tensor([0.25, 0.0, 0.75, 0.5, 0.5, 0.5, 0.25]))


class DesignedScores(nn.Module):
    """A proposal_score head that returns fixed logits ``(B, R)`` after checking its inputs' shapes."""

    def __init__(self, scores: list[list[float]], feature_dim: int) -> None:
        super().__init__()
        self.scores = torch.tensor(scores)
        self.feature = nn.Linear(feature_dim, 1)  # proposal_cells reads the pooled width from here

    def forward(self, features: torch.Tensor, geometry: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        assert features.shape[:2] == geometry.shape[:2] == self.scores.shape and geometry.shape[-1] == 7
        assert pooled.shape[0] == self.scores.shape[0]
        return self.scores


def albef(scores: list[list[float]] | None = None) -> nn.Module:
    torch.manual_seed(0)
    model = vlp.create_model("albef-tiny")
    assert refexp.resolve_mode(model, "auto") == "proposals"  # a patch model with a fusion module
    refexp.ensure_refexp_head(model, "proposals", cells=2)
    assert model.cfg.heads["proposal_score"] == {"feature_dim": 32 * 4}  # vision width x 2x2 bins
    if scores is not None:
        model.heads["proposal_score"] = DesignedScores(scores, 32 * 4)
    return model


def test_proposals_pick_the_best_score_and_train_towards_the_best_iou_candidate(tok):
    model = albef(case.SCORES)
    batch = Batch(images=torch.randn(2, 3, 32, 32), **case.candidate_fields(),
                  **text_fields(tok, ["the red circle", "the small blue square on the left"]))  # fmt: skip
    assert torch.equal(refexp.predict_normalized(model, batch, "proposals"), case.EXPECTED_PICK)
    loss, logs = refexp.ProposalScorer(model)(batch)
    assert loss.item() == pytest.approx(case.EXPECTED_LOSS, rel=1e-6)
    assert logs["acc"] == pytest.approx(case.EXPECTED_ACC)


def test_the_real_head_gets_gradients_from_text_image_and_geometry(tok):
    model = albef()
    batch = Batch(images=torch.randn(2, 3, 32, 32), **case.candidate_fields(),
                  **text_fields(tok, ["the red circle", "a big star"]))  # fmt: skip
    scores, keep = proposal_scores(model, batch)
    assert scores.shape == (2, 3) and torch.isinf(scores[1, 2]) and torch.isfinite(scores[keep]).all()
    loss, _ = refexp.ProposalScorer(model)(batch)
    loss.backward()
    head = model.heads["proposal_score"]
    for part in (head.feature, head.geometry, head.text):
        assert part.weight.grad.abs().sum() > 0
    assert model.vision.patch_embed.weight.grad.abs().sum() > 0  # the image tower learns too
    # the same candidate scores differently for another expression: the text reaches the score
    other = batch.replace(**text_fields(tok, ["a big star", "the red circle"]))
    with torch.no_grad():
        assert not torch.allclose(proposal_scores(model, batch)[0][keep], proposal_scores(model, other)[0][keep])


def test_evaluate_reports_uniform_candidate_chance(tok):
    model = albef([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]).eval()
    samples = [
        {"image": torch.zeros(3, 32, 32), "text": "the red circle", "target_box": case.TARGET[i],
         "region_boxes": case.BOXES[i][case.KEEP[i]], "meta": {"ref_id": i, "sent_id": 10 + i}}
        for i in range(2)
    ]  # fmt: skip
    out = refexp.evaluate(model, tok, samples, mode="proposals", batch_size=2)
    assert out["mode"] == "proposals" and out["n_expressions"] == 2
    picks = [case.BOXES[0, 1].tolist(), case.BOXES[1, 0].tolist()]
    ious = [iou(p, t) for p, t in zip(picks, case.TARGET.tolist())]
    assert out["miou"] == pytest.approx(100 * sum(ious) / 2, abs=1e-4)
    assert out["accuracy"] == pytest.approx(100 * sum(v >= 0.5 for v in ious) / 2)
    every = [[iou(b, case.TARGET[i].tolist()) for b in case.BOXES[i][case.KEEP[i]].tolist()] for i in range(2)]
    assert out["chance"]["miou"] == pytest.approx(100 * sum(sum(e) / len(e) for e in every) / 2, abs=1e-4)
    hits = [sum(v >= 0.5 for v in e) / len(e) for e in every]
    assert out["chance"]["accuracy"] == pytest.approx(100 * sum(hits) / 2, abs=1e-4)


def test_locate_answers_one_of_the_candidates_in_pixels(tok, tmp_path):
    model = albef([[0.0, 3.0]]).eval()
    path = tmp_path / "wide.png"
    Image.new("RGB", (64, 32), (200, 30, 30)).save(path)
    candidates = [[0, 0, 32, 16], [32, 16, 64, 32]]
    box = refexp.locate(model, tok, path, "the red circle", candidates=candidates)
    assert box == pytest.approx((32.0, 16.0, 64.0, 32.0))
    with pytest.raises(ValueError, match="candidates"):
        refexp.locate(model, tok, path, "the red circle")


def test_proposals_are_refused_for_region_models_and_without_candidates(tok):
    region = vlp.create_model("uniter-tiny")
    with pytest.raises(ConfigError, match="region models"):
        refexp.resolve_mode(region, "proposals")
    model = albef()
    batch = Batch(images=torch.randn(1, 3, 32, 32), **text_fields(tok, ["a big star"]))
    with pytest.raises(ConfigError, match="candidate boxes"):
        proposal_scores(model, batch)


def test_grid_model_with_pixel_sampling_scores_candidates(tok):
    # Pixel-BERT keeps 8 random cells of its 4x4 ResNet map in training: the map is rebuilt with zeros elsewhere
    torch.manual_seed(0)
    model = vlp.create_model("pixelbert-tiny")
    refexp.ensure_refexp_head(model, refexp.resolve_mode(model), cells=1)
    images = torch.randn(2, 3, 32, 32)
    assert grid_shape(model, images) == (4, 4)
    batch = Batch(images=images, **case.candidate_fields(),
                  **text_fields(tok, ["the red circle", "a big star"]))  # fmt: skip
    model.train()
    loss, _ = refexp.ProposalScorer(model, cells=1)(batch)
    loss.backward()
    assert torch.isfinite(loss) and model.vision.backbone.conv1.weight.grad.abs().sum() > 0
    model.eval()
    assert refexp.predict_normalized(model, batch, "proposals").shape == (2, 4)


def test_task_options_are_checked():
    from vlp.config import from_dict

    assert from_dict(refexp.RefExpTask, {"mode": "proposals", "cells": 3}, "task").cells == 3
    with pytest.raises(ConfigError, match="task.cells=0"):
        from_dict(refexp.RefExpTask, {"mode": "proposals", "cells": 0}, "task")
