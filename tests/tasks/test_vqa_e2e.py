"""End to end on a tiny ShapesWorld: ``vlp finetune`` the VQA recipes (classification and
generative) for a few steps, ``vlp eval vqa`` writes results.json and predictions.json, and the
reported accuracy equals the official metric recomputed from the raw annotation file."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from shapes_task_helpers import finetune, make_world, pretrained, train_tokenizer

from vlp.cli import main
from vlp.metrics import vqa_accuracy
from vlp.tasks.common import load_model, preprocess_images
from vlp.tasks.vqa import answer_logits


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("vqa")
    world = make_world(root)
    return world, train_tokenizer(world, root / "tok")


def _val(world):
    ann = world / "annotations"
    questions = json.loads((ann / "v2_OpenEnded_shapes_val_questions.json").read_text())["questions"]
    annotations = json.loads((ann / "v2_shapes_val_annotations.json").read_text())["annotations"]
    return questions, {a["question_id"]: a for a in annotations}


def _check_results(out, world, method):
    results = json.loads((out / "results.json").read_text())
    assert {"task", "model", "split", "data", "settings", "metrics", "chance"} <= set(results)
    metrics = results["metrics"]
    assert results["task"] == "vqa" and metrics["method"] == method
    assert {"overall", "per_answer_type", "per_question_type", "n_questions"} <= set(metrics)
    assert {"overall", "per_answer_type"} <= set(results["chance"])
    predictions = {p["question_id"]: p["answer"] for p in json.loads((out / "predictions.json").read_text())}
    questions, annotations = _val(world)
    assert set(predictions) == {q["question_id"] for q in questions} and metrics["n_questions"] == len(questions)
    # the official accuracy, recomputed from the raw annotation file
    accs = {qid: vqa_accuracy(p, [a["answer"] for a in annotations[qid]["answers"]]) for qid, p in predictions.items()}
    assert metrics["overall"] == pytest.approx(100 * sum(accs.values()) / len(accs))
    for kind, value in metrics["per_answer_type"].items():
        mine = [acc for qid, acc in accs.items() if annotations[qid]["answer_type"] == kind]
        assert value == pytest.approx(100 * sum(mine) / len(mine)), kind
    return results, predictions


def test_vilt_classification_finetune_then_eval(world, tmp_path):
    world, tok = world
    init = pretrained("vqa-vilt-tiny", tmp_path / "pre", tok)
    run = finetune("vqa-vilt-tiny", init, world, tmp_path / "run")
    out = tmp_path / "eval"
    assert main(["eval", "vqa", "--model", str(run), "--split", "val", "--out", str(out), "--batch-size", "7"]) == 0
    results, predictions = _check_results(out, world, "classify")
    # the predictions are the vqa head's arg-max over the vocabulary saved with the run
    loaded = load_model(run)
    vocab = loaded.task["answer_vocab"]
    assert loaded.model.heads["vqa"][-1].out_features == len(vocab) > 5
    questions, _ = _val(world)
    pixels = preprocess_images([world / f"images/val/{q['image_id']:07d}.png" for q in questions], loaded.recipe.data)
    tok = loaded.tokenizer([q["question"] for q in questions], max_length=loaded.recipe.data.max_text_len)
    from vlp.data.batch import Batch

    batch = Batch(input_ids=tok.input_ids, attention_mask=tok.attention_mask.bool(), images=pixels)
    with torch.no_grad():
        best = answer_logits(loaded.model, batch).argmax(1).tolist()
    assert [predictions[q["question_id"]] for q in questions] == [vocab[i] for i in best]
    # the same questions read as plain VQAv2 files, described by a YAML data section
    spec = {"data": {"type": "vqav2", "root": str(world), "paths": {
        "questions": "annotations/v2_OpenEnded_shapes_{split}_questions.json",
        "annotations": "annotations/v2_shapes_{split}_annotations.json",
        "train_annotations": "annotations/v2_shapes_train_annotations.json", "images": "images/{split}"},
        "options": {"image_template": "{image_id:07d}.png"}}}  # fmt: skip
    (tmp_path / "vqav2.yaml").write_text(yaml.safe_dump(spec))
    out2 = tmp_path / "eval2"
    assert main(["eval", "vqa", "--model", str(run), "--split", "val", "--out", str(out2), "--data",
                 str(tmp_path / "vqav2.yaml")]) == 0  # fmt: skip
    again, _ = _check_results(out2, world, "classify")
    assert again["data"]["type"] == "vqav2" and again["metrics"]["overall"] == results["metrics"]["overall"]


def test_blip_generative_finetune_then_generate_and_rank(world, tmp_path):
    world, tok = world
    init = pretrained("vqa_gen-blip-tiny", tmp_path / "pre", tok)
    run = finetune("vqa_gen-blip-tiny", init, world, tmp_path / "run")
    common = ["--model", str(run), "--split", "val", "--batch-size", "8"]
    assert main(["eval", "vqa", *common, "--out", str(tmp_path / "gen"), "--max-new-tokens", "3"]) == 0
    results, _ = _check_results(tmp_path / "gen", world, "generate")
    assert results["settings"]["style"] == "blip" and results["settings"]["strategy"] == "greedy"
    assert main(["eval", "vqa", *common, "--out", str(tmp_path / "rank"), "--method", "rank"]) == 0
    _, predictions = _check_results(tmp_path / "rank", world, "rank")
    assert set(predictions.values()) <= set(load_model(run).task["answer_vocab"])


def test_classification_without_a_vqa_head_is_refused(world, tmp_path):
    world, tok = world
    init = pretrained("vqa-vilt-tiny", tmp_path / "pre", tok)  # no vqa head before fine-tuning
    code = main(["eval", "vqa", "--model", str(init), "--data", str(world), "--method", "classify",
                 "--out", str(tmp_path / "o")])  # fmt: skip
    assert code == 2  # a ConfigError, reported by the CLI
