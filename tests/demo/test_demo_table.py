"""The demo's and the taxonomy's tables, the survey checks, the uniform taxonomy settings and the
latency timer: hand-written expected outputs, no training."""

from __future__ import annotations

import math

import pytest

from vlp.config import ConfigError
from vlp.demo import latency
from vlp.demo.claims import survey_checks, taxonomy_markdown
from vlp.demo.config import DemoConfig
from vlp.demo.table import ResultRow, markdown_table, results_table, taxonomy_table
from vlp.demo.taxonomy import TaxonomyConfig, chance_row, uniform_overrides
from vlp.recipe import recipe_dict


def test_markdown_table_pads_and_aligns():
    text = markdown_table(["task", "score"], [["vqa", "50.0"], ["retrieval", "7.5"]])
    assert text.splitlines() == [
        "| task      | score |",
        "| --------- | ----: |",
        "| vqa       |  50.0 |",
        "| retrieval |   7.5 |",
    ]
    with pytest.raises(ValueError, match="every row needs 2 cells"):
        markdown_table(["a", "b"], [["only one"]])


def test_results_table_ratio_to_chance():
    rows = [
        ResultRow("VQA", "accuracy", 60.0, 40.0),
        ResultRow("retrieval", "R@1", 3.0, 0.4),
        ResultRow("refexp", "acc", 0.0, 0.0),  # no positive chance level: no ratio
        ResultRow("captioning", "CIDEr", 12.0, None),
    ]
    lines = results_table(rows).splitlines()
    assert lines[0].split("|")[1:-1] == [" task       ", " metric   ", " score ", " chance ", " x chance "]
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in lines[2:]]
    assert cells == [
        ["VQA", "accuracy", "60.0", "40.0", "1.5x"],
        ["retrieval", "R@1", "3.0", "0.4", "7.5x"],
        ["refexp", "acc", "0.0", "0.0", "-"],
        ["captioning", "CIDEr", "12.0", "-", "-"],
    ]
    assert rows[1].ratio() == pytest.approx(7.5)


def _rows():
    return [
        {"family": "single-stream", "model": "uniter-tiny", "input": "region", "retrieval_r1": 2.0,
         "retrieval_rsum": 40.0, "vqa": 55.0, "refexp": 70.0, "refexp_mark": " (chance 35)", "params_k": 43.5,
         "latency_retrieval_ms": 9.0, "latency_vqa_ms": 1.0, "latency_vision_ms": 0.1, "refexp_chance": 35.0},
        {"family": "single-stream", "model": "vilt-tiny", "input": "patch", "retrieval_r1": 3.0,
         "retrieval_rsum": 50.0, "vqa": 60.0, "refexp": 30.0, "params_k": 65.6, "latency_retrieval_ms": 12.0,
         "latency_vqa_ms": 1.5, "latency_vision_ms": 0.3, "refexp_chance": 5.0, "vqa_chance": 40.0},
        {"family": "single-stream", "model": "pixelbert-tiny", "input": "grid", "retrieval_r1": 1.0,
         "retrieval_rsum": 30.0, "vqa": 58.0, "refexp": 20.0, "params_k": 59.2, "latency_retrieval_ms": 14.0,
         "latency_vqa_ms": 2.0, "latency_vision_ms": 0.5, "refexp_chance": 5.0},
        {"family": "dual encoder", "model": "clip-tiny", "input": "patch", "retrieval_r1": 4.0,
         "retrieval_rsum": 60.0, "vqa": 45.0, "refexp": 10.0, "params_k": 64.1, "latency_retrieval_ms": 0.5,
         "latency_vqa_ms": 1.2, "gallery_images": 100, "refexp_chance": 5.0},
    ]  # fmt: skip


def test_taxonomy_table_rows_marks_and_chance():
    rows = _rows()
    rows[2] = {k: v for k, v in rows[2].items() if k != "vqa"}  # a missing value prints "-"
    chance = chance_row(rows)
    # VQA chance from any row that has it is not required: the first row has none here
    assert chance["refexp"] == 5.0  # a box-regression row's, not the region row's 35
    lines = taxonomy_table(rows, chance).splitlines()
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in lines]
    assert cells[0][:4] == ["family", "model", "input", "R@1 (t2i/i2t mean)"]
    assert cells[2] == ["single-stream", "uniter-tiny", "region", "2.0", "40.0", "55.0", "70.0 (chance 35)",
                        "43.5", "9.00", "1.00"]  # fmt: skip
    assert cells[4][5] == "-"
    assert cells[-1][:3] == ["chance", "-", "-"] and cells[-1][6] == "5.0"


def test_survey_checks_agree_and_disagree():
    lines = survey_checks(_rows())
    assert len(lines) == 4
    fast, shallow, region, patch = lines
    assert "0.50 ms" in fast and "uniter-tiny" in fast and fast.endswith("agrees.")
    assert "3 of 3 fusion families score higher" in shallow and shallow.endswith("agrees.")
    assert "0.10 ms" in region and "lower bound" in region
    assert "region 0.10 ms, patch 0.30 ms, grid 0.50 ms" in patch and "-> agrees" in patch
    slow = _rows()
    slow[3]["latency_retrieval_ms"] = 20.0  # the dual encoder is no longer the fastest
    slow[3]["vqa"] = 99.0  # nor shallow
    slow[1]["latency_vision_ms"] = 0.9  # patch slower than grid
    fast, shallow, _, patch = survey_checks(slow)
    assert fast.endswith("disagrees.") and shallow.endswith("disagrees.") and "disagrees" in patch
    text = taxonomy_markdown("TABLE", _rows(), {"budget_steps": 7, "finetune_steps": 3, "images": 50})
    assert "`vlp bench taxonomy --budget-steps 7 --finetune-steps 3`" in text and "\nTABLE\n" in text
    assert all(f"- {line}" in text for line in lines)


def test_uniform_overrides_per_family():
    cfg = TaxonomyConfig(budget_steps=200, patch_size=4, image_size=32)
    clip = uniform_overrides(recipe_dict("clip-tiny"), cfg)
    assert clip["model.vision.patch_size"] == 4 and clip["train.steps"] == 200
    # BERT's 0.02 is for width 768: scaled by sqrt(768 / 32) for the width-32 text towers
    assert clip["model.text.init_std"] == pytest.approx(0.02 * math.sqrt(24), abs=1e-4)
    assert clip["model.momentum"] == 0.0 and clip["optim.module_lr"] == {} and clip["model.vision.pos"] == "sincos"
    assert "objectives.itm.negatives" not in clip  # ITC only
    assert uniform_overrides(recipe_dict("albef-tiny"), cfg)["objectives.itm.negatives"] == "random"
    uniter = uniform_overrides(recipe_dict("uniter-tiny"), cfg)
    assert "model.vision.patch_size" not in uniter and "model.vision.image_size" not in uniter  # regions
    grid = uniform_overrides(recipe_dict("pixelbert-tiny"), cfg)
    assert grid["model.vision.image_size"] == 32 and "model.vision.patch_size" not in grid
    with pytest.raises(ConfigError, match="families"):
        TaxonomyConfig(families=["bert-huge"])
    with pytest.raises(ConfigError, match="budget_steps"):
        TaxonomyConfig(budget_steps=0)


def test_demo_config_checks():
    assert DemoConfig.quick().images < DemoConfig().images
    with pytest.raises(ConfigError, match="image_size=30: expected a multiple of patch_size=4"):
        DemoConfig(image_size=30)
    with pytest.raises(ConfigError, match="pretrain_steps=0"):
        DemoConfig(pretrain_steps=0)
    with pytest.raises(ConfigError, match="generation_seconds=-1: expected a number >= 0"):
        DemoConfig(generation_seconds=-1)
    assert DemoConfig(generation_seconds=0).generation_budget() is None  # 0 = no text-to-image training
    assert DemoConfig(generation_steps=0).generation_budget() is None
    assert DemoConfig().generation_budget() == {"steps": 750}  # a step count by default: the same samples each run
    assert DemoConfig(generation_seconds=90).generation_budget() == {"seconds": 90.0}
    with pytest.raises(ConfigError, match="generation_steps=-1: expected an integer >= 0"):
        DemoConfig(generation_steps=-1)


def test_median_seconds_with_a_scripted_clock(monkeypatch):
    # each call of fn() takes (end - start) on this clock: 5, 1, 3 -> median 3; warm-up calls are not timed
    ticks = iter([0.0, 5.0, 10.0, 11.0, 20.0, 23.0])
    monkeypatch.setattr(latency.time, "perf_counter", lambda: next(ticks))
    calls = []
    assert latency.median_seconds(lambda: calls.append(1), repeats=3, warmup=2) == 3.0
    assert len(calls) == 5
    with pytest.raises(ValueError, match="repeats"):
        latency.median_seconds(lambda: None, repeats=0)
