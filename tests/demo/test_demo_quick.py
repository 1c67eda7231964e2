"""``vlp demo --quick`` end to end in a temporary folder: every step runs, report.md embeds the
pictures it wrote, and the table's chance levels equal ones recomputed here from the raw files."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
import torch

from vlp.cli import main
from vlp.config import ConfigError
from vlp.demo.pipeline import MARKER, _prepare
from vlp.metrics import vqa_accuracy

EXPECTED_TASKS = {
    "image tagging (image tower alone)": 1,
    "retrieval (zero-shot)": 3,
    "zero-shot classification": 2,
    "linear probe (frozen image embedding)": 1,
    "zero-shot heat map": 2,
    "VQA (fine-tuned)": 1,
    "referring expressions (fine-tuned)": 2,
    "captioning (fine-tuned)": 2,
}
FIGURES = ("loss_curves", "retrieval", "heatmap", "vqa", "refexp", "captions", "generation")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    before = torch.get_num_threads()
    out = tmp_path_factory.mktemp("demo") / "run"
    try:
        assert main(["demo", "--quick", "--out", str(out), "--set", "objectives.itm.swap_fraction=0.5"]) == 0
    finally:
        torch.set_num_threads(before)
    return out, json.loads((out / "results.json").read_text())


def test_report_embeds_every_picture(demo):
    out, results = demo
    report = (out / "report.md").read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert sorted(Path(p).stem for p in linked) == sorted(FIGURES)
    for rel in linked:
        png = out / rel
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000, rel
    assert "text-to-image" in report.lower() and "## Timings" in report
    # the generator trained inside the demo, and the report says for how long
    summary = json.loads((out / "runs" / "generation" / "summary.json").read_text())
    assert summary["steps"] == 2 and (out / "runs" / "generation" / "model" / "model.safetensors").is_file()
    assert f"on the second core during this demo for {summary['cpu_seconds']:.0f} s of CPU time" in report
    # every run read its images from the demo's decoded-image store
    assert any((out / "decoded").glob("vlp-decoded-*.json"))
    # the pretrained model is a reusable save_pretrained folder
    assert (out / "model" / "model.safetensors").is_file() and (out / "model" / "tokenizer.json").is_file()


def test_results_table_has_every_task_with_chance(demo):
    out, results = demo
    rows = results["table"]
    assert Counter(r["task"] for r in rows) == Counter(EXPECTED_TASKS)
    assert all(r["chance"] is not None and r["score"] >= 0 for r in rows)
    report = (out / "report.md").read_text()
    for row in rows:  # the markdown table carries every row with its chance level
        assert re.search(rf"\| {re.escape(row['task'])} +\| {re.escape(row['metric'])} +\| +{row['score']:.1f} "
                         rf"\| +{row['chance']:.1f} \|", report), row  # fmt: skip
    steps = [t["step"] for t in results["timings"]]
    # the three fine-tunes are one step: two of them run side by side
    assert len(steps) == 10 and all(t["wall_s"] >= 0 and t["cpu_s"] >= 0 for t in results["timings"])


def test_pretraining_starts_from_the_tagging_run_with_the_overrides(demo):
    import yaml

    out, _ = demo
    recipe = yaml.safe_load((out / "runs" / "pretrain" / "recipe.yaml").read_text())
    assert recipe["train"]["init"] == str(out / "runs" / "tagging") and recipe["train"]["init_parts"] == ["vision"]
    assert recipe["objectives"]["itm"]["swap_fraction"] == 0.5  # --set reached the pretraining recipe
    assert recipe["objectives"]["itm"]["swap_itc_weight"] == 0.5  # the demo recipe's own settings


def test_heat_map_threshold_is_chosen_on_val(demo):
    _, results = demo
    chosen = results["metrics"]["perception"]["threshold"]
    on_val = {float(k): v for k, v in chosen["val_accuracy"].items()}
    assert chosen["method"] == "std" and on_val[chosen["k"]] == max(on_val.values())
    assert _row(results, "zero-shot heat map", "box acc")["metric"] == f"box acc@IoU0.5 (k={chosen['k']:g} from val)"


@pytest.mark.parametrize(
    ("step", "run", "task", "metric"),
    [
        ("vqa_step", "vqa", "VQA (fine-tuned)", "VQA accuracy"),
        ("refexp_step", "refexp", "referring expressions (fine-tuned)", "acc@IoU0.5"),
        ("captioning_step", "captioning", "captioning (fine-tuned)", "CIDEr-D x100"),
    ],
)
def test_each_fine_tune_equals_it_fine_tuned_here(demo, tmp_path, step, run, task, metric):
    # the demo shares the fine-tunes out between itself and a spawned process (whichever is free takes the next);
    # each step run here, one after the other as the demo did before, with a freshly trained tokenizer, gives
    # the same weights and scores wherever the demo ran it
    from safetensors.torch import load_file

    from vlp.demo import steps
    from vlp.demo.config import DemoConfig
    from vlp.demo.training import train_shapes_tokenizer

    out, results = demo
    cfg = DemoConfig.quick()
    tokenizer = train_shapes_tokenizer(out / "world", tmp_path / "tokenizer", cfg.vocab_size)
    here = getattr(steps, step)(out / "runs" / "pretrain", tokenizer, out / "world", cfg, tmp_path / "runs")
    assert _row(results, task, metric)["score"] == next(r for r in here.rows if r.metric.startswith(metric)).score
    ours = load_file(next((tmp_path / "runs" / run / "checkpoints").glob("step_*")) / "model.safetensors")
    theirs = load_file(next((out / "runs" / run / "checkpoints").glob("step_*")) / "model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_samples_drawn_by_the_generator_process_equal_samples_drawn_here(demo, tmp_path):
    # the text-to-image child draws the report's samples right after training; drawing them here from its saved
    # model, as the demo did before, gives the same pixels
    import numpy as np
    from PIL import Image

    from vlp.demo.config import DemoConfig
    from vlp.demo.generation import generated_images, sample_prompts
    from vlp.demo.steps import test_objects

    out, _ = demo
    prompts = sample_prompts([o for objs in test_objects(out / "world").values() for o in objs])
    here = generated_images(out / "runs" / "generation" / "model", prompts, tmp_path / "generation.png",
                            steps=DemoConfig.quick().generation_sample_steps)  # fmt: skip
    theirs = np.asarray(Image.open(out / "figures" / "generation.png"))
    assert theirs.shape == np.asarray(Image.open(here)).shape and (theirs == np.asarray(Image.open(here))).all()


def _row(results, task, metric_start):
    return next(r for r in results["table"] if r["task"] == task and r["metric"].startswith(metric_start))


def test_chance_levels_recomputed_from_the_raw_files(demo):
    out, results = demo
    ann = out / "world" / "annotations"
    # retrieval text->image: a random ranking finds the one right image at rank 1 with probability 1 / N
    test_images = json.loads((ann / "captions_test.json").read_text())
    assert _row(results, "retrieval (zero-shot)", "text->image")["chance"] == pytest.approx(100 / len(test_images))
    # zero-shot shape: always answering the most frequent shape of the images' largest objects
    inst = json.loads((ann / "instances_test.json").read_text())
    largest = {}
    for a in inst["annotations"]:
        if a["image_id"] not in largest or a["area"] > largest[a["image_id"]]["area"]:
            largest[a["image_id"]] = a
    counts = Counter(a["category_id"] for a in largest.values())
    majority = 100 * max(counts.values()) / len(largest)
    assert _row(results, "zero-shot classification", "shape")["chance"] == pytest.approx(max(majority, 100 / 6))
    # tagging: constant scores rank every image alike, so each class's AP is its share of the test images
    present = {}
    for a in inst["annotations"]:
        present.setdefault(a["category_id"], set()).add(a["image_id"])
    prevalence = [len(ids) / len(inst["images"]) for ids in present.values()]
    tag_chance = _row(results, "image tagging (image tower alone)", "mAP")["chance"]
    assert tag_chance == pytest.approx(100 * sum(prevalence) / len(prevalence))
    # VQA: the most frequent human answer of each answer type, scored with the official accuracy
    anns = json.loads((ann / "v2_shapes_test_annotations.json").read_text())["annotations"]
    by_type: dict[str, Counter] = {}
    for a in anns:
        by_type.setdefault(a["answer_type"], Counter()).update(x["answer"] for x in a["answers"])
    best = {t: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for t, c in by_type.items()}
    prior = 100 * sum(vqa_accuracy(best[a["answer_type"]], [x["answer"] for x in a["answers"]]) for a in anns)
    assert _row(results, "VQA (fine-tuned)", "VQA")["chance"] == pytest.approx(prior / len(anns))
    # referring expressions: a uniformly random annotated object of the image (the candidates)
    from vlp.data.safe_pickle import safe_load

    boxes: dict[int, list[list[float]]] = {}
    by_id = {}
    for a in json.loads((ann / "instances.json").read_text())["annotations"]:
        x, y, w, h = a["bbox"]
        by_id[a["id"]] = [x, y, x + w, y + h]
        boxes.setdefault(a["image_id"], []).append(by_id[a["id"]])
    hits = []
    for ref in safe_load(ann / "refs(unc).p"):
        if ref["split"] == "test":
            target, candidates = by_id[ref["ann_id"]], boxes[ref["image_id"]]
            share = sum(_iou(c, target) >= 0.5 for c in candidates) / len(candidates)
            hits += [share] * len(ref["sentences"])
    chance = _row(results, "referring expressions (fine-tuned)", "acc@IoU0.5")["chance"]
    assert chance == pytest.approx(100 * sum(hits) / len(hits), abs=1e-3)


def _iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return w * h / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h)


def test_demo_folder_is_only_cleared_when_a_demo_wrote_it(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("keep me")
    with pytest.raises(ConfigError, match="was not written by vlp demo"):
        _prepare(foreign)
    assert (foreign / "thesis.tex").is_file()
    ours = tmp_path / "demo"
    ours.mkdir()
    (ours / MARKER).write_text("{}")
    (ours / "old.png").write_text("stale")
    _prepare(ours)
    assert ours.is_dir() and not any(ours.iterdir())


@pytest.mark.parametrize("core_free_at_start", [False, True])
def test_fine_tunes_shared_with_a_second_process_once_its_core_is_free(demo, tmp_path, core_free_at_start):
    # with the second core taken at the start (the text-to-image process), this process takes VQA (the first
    # job) and the spawned one the next job once the core is free; with it free, the spawned one takes VQA.
    # Every output equals the demo's, wherever it ran
    from vlp.demo.config import DemoConfig
    from vlp.demo.parallel import run_finetunes
    from vlp.text import Tokenizer

    out, results = demo
    lines: list[str] = []
    jobs = [("VQA", "vqa_step"), ("refexp", "refexp_step"), ("captioning", "captioning_step")]
    outputs = run_finetunes(jobs, out / "runs" / "pretrain", Tokenizer.load(out / "tokenizer"), out / "tokenizer",
                            out / "world", DemoConfig.quick(), tmp_path / "runs", 2, lines.append,
                            wait_for_core=None if core_free_at_start else lambda timeout: timeout is None)  # fmt: skip
    vqa = next(line for line in lines if line.startswith("    VQA"))
    assert ("(second process)" in vqa) == core_free_at_start
    assert any("(second process)" in line for line in lines)
    for output in outputs:
        for row in output.rows:
            assert _row(results, row.task, row.metric)["score"] == row.score
