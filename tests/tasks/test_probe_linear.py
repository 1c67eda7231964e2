"""Linear probe and few-shot: separable features are learned perfectly, the torch L-BFGS solver
matches scikit-learn's LogisticRegression, k-shot sampling and prototypes behave as worked by hand,
and ``vlp eval probe`` runs end to end on a tiny ShapesWorld."""

from __future__ import annotations

import pytest
import torch
from grounding_helpers import make_world, read_json, train_tokenizer
from shapes_task_helpers import pretrained

from vlp.cli import main
from vlp.config import ConfigError
from vlp.tasks import probe


def clusters(per_class: int, seed: int, classes: int = 3, spread: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian blobs around well separated centres in 5-D: linearly separable."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[4.0, 0, 0, 0, 0], [0, 4.0, 0, 0, 0], [0, 0, 4.0, 0, 0], [-4.0, -4.0, 0, 0, 0]])[:classes]
    labels = torch.arange(classes).repeat_interleave(per_class)
    return centres[labels] + spread * torch.randn(len(labels), 5, generator=g), labels


def test_linear_probe_learns_separable_features_perfectly():
    train, val, test = clusters(20, 0), clusters(5, 1), clusters(10, 2)
    out = probe.linear_probe(train, val, test, num_classes=3, Cs=(0.01, 1.0, 100.0))
    assert out["accuracy"] == 100.0
    assert set(out["val"]) == {0.01, 1.0, 100.0} and out["C"] == min(c for c, v in out["val"].items() if v == 100.0)


def test_torch_solver_matches_scikit_learn():
    pytest.importorskip("sklearn")
    x, y = clusters(15, 3, classes=4, spread=2.5)  # overlapping: the penalty matters
    for C in (0.05, 1.0):
        ours = probe.fit_logistic(x, y, C, backend="torch")
        theirs = probe.fit_logistic(x, y, C, backend="sklearn")
        assert ours.logits(x).softmax(1).tolist() == [
            pytest.approx(row, abs=2e-4) for row in theirs.logits(x).softmax(1).tolist()]  # fmt: skip
        assert ours.weight.tolist() == [pytest.approx(row, abs=2e-3) for row in theirs.weight.tolist()]


def test_classes_missing_from_training_are_never_predicted():
    x, y = clusters(10, 4)
    keep = y != 1
    clf = probe.fit_logistic(x[keep], y[keep], 1.0, num_classes=3)
    assert set(clf.predict(x).tolist()) <= {0, 2}
    assert probe.prototype_classifier(x[keep], y[keep], 3).predict(x[y == 1]).tolist() != [1] * 10


def test_prototypes_and_shot_sampling_by_hand():
    # class 0 at angles near 0, class 1 near 90 degrees; the query at 30 degrees is closer to class 0
    x = torch.tensor([[1.0, 0.0], [2.0, 0.2], [0.0, 1.0], [0.1, 3.0]])
    y = torch.tensor([0, 0, 1, 1])
    clf = probe.prototype_classifier(x, y, 2)
    assert clf.predict(torch.tensor([[0.87, 0.5], [0.5, 0.87]])).tolist() == [0, 1]
    labels = torch.tensor([0, 0, 0, 1, 2, 2])
    picked = probe.sample_shots(labels, 2, seed=0)
    assert sorted(labels[picked].tolist()) == [0, 0, 1, 2, 2]  # class 1 has one image only
    assert torch.equal(picked, probe.sample_shots(labels, 2, seed=0))
    with pytest.raises(ConfigError):
        probe.sample_shots(labels, 0, seed=0)


def test_few_shot_runs_for_one_and_five_shots():
    train, test = clusters(10, 5), clusters(10, 6)
    out = probe.few_shot(train, test, 3, shots=(1, 5), seeds=3)
    assert set(out) == {"1", "5"}
    for k in ("1", "5"):
        for method in ("prototype", "probe"):
            assert out[k][method] == {"mean": 100.0, "std": 0.0}  # separable blobs: any draw is enough


def test_eval_probe_end_to_end(tmp_path):
    world = make_world(tmp_path, images=50)
    init = pretrained("zeroshot-clip-tiny", tmp_path / "pre", train_tokenizer(world, tmp_path / "tok"))
    out = tmp_path / "eval"
    rc = main(["eval", "probe", "--model", str(init), "--data", str(world), "--out", str(out), "--Cs", "0.1,10",
               "--shots", "1,2", "--seeds", "2", "--by", "shape", "--features", "pooled"])  # fmt: skip
    assert rc == 0
    results = read_json(out / "results.json")
    metrics = results["metrics"]
    assert set(metrics["linear_probe"]["val"]) == {"0.1", "10.0"} and set(metrics["few_shot"]) == {"1", "2"}

    def labels(split):
        data = read_json(world / "annotations" / f"instances_{split}.json")
        out = []
        for image in data["images"]:
            anns = [a for a in data["annotations"] if a["image_id"] == image["id"]]
            if anns:
                out.append(max(anns, key=lambda a: a["bbox"][2] * a["bbox"][3])["category_id"])
        return out

    train, test = labels("train"), labels("test")
    assert (metrics["n_train"], metrics["n_val"], metrics["n_test"]) == (len(train), len(labels("val")), len(test))
    majority = max(set(train), key=lambda c: (train.count(c), -c))
    assert results["chance"]["majority"] == pytest.approx(100 * test.count(majority) / len(test))
