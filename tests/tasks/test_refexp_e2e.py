"""End to end on a tiny ShapesWorld: ``vlp finetune`` the referring-expression recipes (ViLT box
regression and candidate-box scoring, UNITER region scoring) for a few steps, ``vlp eval refexp``
writes results.json and predictions.json, and the reported metrics equal IoUs recomputed from the
raw refs + instances files."""

from __future__ import annotations

import numpy as np
import pytest
from grounding_helpers import make_world, read_json, train_tokenizer
from refexp_helpers import iou
from shapes_task_helpers import finetune, pretrained

from vlp.cli import main
from vlp.data.safe_pickle import safe_load
from vlp.tasks.common import load_model
from vlp.tasks.refexp import locate


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("refexp")
    world = make_world(root)
    return world, train_tokenizer(world, root / "tok")


def val_targets(world) -> dict[int, list[float]]:
    """sent_id -> target box (xyxy pixels) of every val expression, from the raw files."""
    anns = {a["id"]: a["bbox"] for a in read_json(world / "annotations" / "instances.json")["annotations"]}
    out = {}
    for ref in safe_load(world / "annotations" / "refs(unc).p"):
        if ref["split"] == "val":
            x, y, w, h = anns[ref["ann_id"]]
            out.update({s["sent_id"]: [x, y, x + w, y + h] for s in ref["sentences"]})
    return out


def check_results(out, world, mode):
    results = read_json(out / "results.json")
    assert results["task"] == "refexp" and results["metrics"]["mode"] == mode
    assert {"accuracy", "miou"} <= set(results["chance"])
    predictions = read_json(out / "predictions.json")
    targets = val_targets(world)
    assert sorted(p["sent_id"] for p in predictions) == sorted(targets)
    assert results["metrics"]["n_expressions"] == len(targets)
    recomputed = [iou(p["box"], targets[p["sent_id"]]) for p in predictions]  # pixel boxes, rounded to 0.01
    assert recomputed == pytest.approx([p["iou"] for p in predictions], abs=2e-3)
    ious = [p["iou"] for p in predictions]
    assert results["metrics"]["miou"] == pytest.approx(100 * sum(ious) / len(ious))
    assert results["metrics"]["accuracy"] == pytest.approx(100 * sum(v >= 0.5 for v in ious) / len(ious))
    return results, predictions, targets


def test_vilt_box_regression_finetune_then_eval(world, tmp_path):
    world, tok = world
    init = pretrained("refexp-vilt-tiny", tmp_path / "pre", tok)
    run = finetune("refexp-vilt-tiny", init, world, tmp_path / "run")
    out = tmp_path / "eval"
    assert main(["eval", "refexp", "--model", str(run), "--split", "val", "--out", str(out), "--batch-size", "7"]) == 0
    results, predictions, targets = check_results(out, world, "box")
    # chance: the mean-size target box at the image centre
    boxes = list(targets.values())
    w, h = np.mean([b[2] - b[0] for b in boxes]), np.mean([b[3] - b[1] for b in boxes])
    centre = [16 - w / 2, 16 - h / 2, 16 + w / 2, 16 + h / 2]
    assert results["chance"]["miou"] == pytest.approx(100 * np.mean([iou(centre, b) for b in boxes]), abs=1e-3)
    # the predict API gives the same box for the same image and expression
    loaded = load_model(run)
    first = predictions[0]
    image = world / "images" / "val" / f"{first['image_id']:07d}.png"
    assert locate(loaded.model, loaded.tokenizer, image, first["expression"]) == pytest.approx(first["box"], abs=0.01)


def test_uniter_region_scoring_finetune_then_eval(world, tmp_path):
    world, tok = world
    init = pretrained("refexp-uniter-tiny", tmp_path / "pre", tok)
    run = finetune("refexp-uniter-tiny", init, world, tmp_path / "run")
    assert load_model(run).task["mode"] == "regions"
    out = tmp_path / "eval"
    assert main(["eval", "refexp", "--model", str(run), "--data", str(world), "--split", "val", "--out", str(out)]) == 0
    results, predictions, targets = check_results(out, world, "regions")
    # every answer is one of the image's detector boxes; chance = a uniformly random region
    regions = {p["image_id"]: np.load(world / "regions" / f"{p['image_id']:07d}.npz")["boxes"].tolist()
               for p in predictions}  # fmt: skip
    check_candidate_answers(results, predictions, targets, regions)


def check_candidate_answers(results, predictions, targets, candidates) -> None:
    """Every answer is one of its image's ``candidates`` (image id -> boxes), and the reported chance is a
    uniformly random candidate's accuracy and IoU, recomputed here."""
    hits, chance_ious = [], []
    for p in predictions:
        boxes = candidates[p["image_id"]]
        assert min(max(abs(a - b) for a, b in zip(p["box"], c)) for c in boxes) < 0.01
        ious = [iou(c, targets[p["sent_id"]]) for c in boxes]
        hits.append(np.mean([v >= 0.5 for v in ious]))
        chance_ious.append(np.mean(ious))
    assert results["chance"]["accuracy"] == pytest.approx(100 * np.mean(hits), abs=1e-3)
    assert results["chance"]["miou"] == pytest.approx(100 * np.mean(chance_ious), abs=1e-3)


def test_eval_without_a_refexp_head_is_refused(world, tmp_path):
    world, tok = world
    init = pretrained("refexp-vilt-tiny", tmp_path / "pre", tok)  # no box head before fine-tuning
    code = main(["eval", "refexp", "--model", str(init), "--data", str(world), "--out", str(tmp_path / "o")])
    assert code == 2  # a ConfigError, reported by the CLI


def test_vilt_proposal_scoring_finetune_then_eval(world, tmp_path):
    world, tok = world
    init = pretrained("refexp-vilt-tiny", tmp_path / "pre", tok)
    run = finetune(
        "refexp-vilt-tiny",
        init,
        world,
        tmp_path / "run",
        2,
        "--set",
        "task.mode=proposals",
        "--set",
        "optim.module_lr={model.heads.proposal_score: 1.0e-3}",
    )
    assert load_model(run).task["mode"] == "proposals"
    out = tmp_path / "eval"
    assert main(["eval", "refexp", "--model", str(run), "--split", "val", "--out", str(out), "--batch-size", "5"]) == 0
    results, predictions, targets = check_results(out, world, "proposals")
    # every answer is one of the image's annotated objects; chance = a uniformly random object
    objects: dict[int, list[list[float]]] = {}
    for a in read_json(world / "annotations" / "instances.json")["annotations"]:
        x, y, w, h = a["bbox"]
        objects.setdefault(a["image_id"], []).append([x, y, x + w, y + h])
    check_candidate_answers(results, predictions, targets, objects)
    # the predict API answers the same candidate when given the image's objects
    loaded = load_model(run)
    first = predictions[0]
    image = world / "images" / "val" / f"{first['image_id']:07d}.png"
    box = locate(loaded.model, loaded.tokenizer, image, first["expression"], candidates=objects[first["image_id"]])
    assert box == pytest.approx(first["box"], abs=0.01)
