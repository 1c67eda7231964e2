"""The demo's text-to-image training in a second process: a failing child is reported, not fatal."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlp.demo.generation import BackgroundGenerator, sample_prompts


def test_a_failed_child_gives_no_model_and_names_its_folder(tmp_path: Path) -> None:
    blocked = tmp_path / "generation"
    blocked.write_text("a file where the run folder should go", encoding="utf-8")
    model, reason = BackgroundGenerator(blocked, {"steps": 2}, quick=True).result()
    assert model is None
    assert "exited with code 1" in reason and str(blocked) in reason


def test_sample_prompts_are_distinct_and_in_order() -> None:
    objects = [{"color": "red", "shape": "circle"}, {"color": "red", "shape": "circle"},
               {"color": "blue", "shape": "star"}]  # fmt: skip
    assert sample_prompts(objects) == ["a red circle", "a blue star"]
    assert sample_prompts(objects, count=1) == ["a red circle"]


def test_quick_training_runs_exactly_two_steps_however_busy_the_machine(tmp_path: Path, monkeypatch) -> None:
    # `vlp demo --quick` used a 1 s CPU budget besides its 2 steps, so a busy machine trained 1 step and the
    # demo test failed; a clock that jumps 100 s per reading stands for the busiest machine
    import time

    from vlp.demo.generation import train_generator

    ticks = iter(range(0, 10**9, 100))
    monkeypatch.setattr(time, "process_time", lambda: float(next(ticks)))
    monkeypatch.setattr(time, "perf_counter", lambda: float(next(ticks)))
    model, summary = train_generator(tmp_path / "generation", seconds=1.0, quick=True)
    assert summary["steps"] == 2 and summary["stopped_by"] == "steps"
    assert (model / "model.safetensors").is_file()


def test_a_step_budget_trains_exactly_that_many_steps(tmp_path: Path) -> None:
    # the demo's default budget is a step count: the learning-rate schedule spans exactly those steps
    import json

    from vlp.demo.generation import train_generator

    model, summary = train_generator(tmp_path / "generation", steps=3)
    assert summary["steps"] == 3 and summary["stopped_by"] == "steps" and summary["total_steps"] == 3
    records = [json.loads(line) for line in (tmp_path / "generation" / "metrics.jsonl").read_text().splitlines()]
    assert (model / "model.safetensors").is_file() and records[-1]["step"] == 3
    with pytest.raises(ValueError, match="expected steps >= 1 or seconds"):
        train_generator(tmp_path / "other", steps=0)
