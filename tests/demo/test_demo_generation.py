"""The demo's text-to-image training in a second process: a failing child is reported, not fatal."""

from __future__ import annotations

from pathlib import Path

from vlp.demo.generation import BackgroundGenerator, sample_prompts


def test_a_failed_child_gives_no_model_and_names_its_folder(tmp_path: Path) -> None:
    blocked = tmp_path / "generation"
    blocked.write_text("a file where the run folder should go", encoding="utf-8")
    model, reason = BackgroundGenerator(blocked, seconds=1.0, quick=True).result()
    assert model is None
    assert "exited with code 1" in reason and str(blocked) in reason


def test_sample_prompts_are_distinct_and_in_order() -> None:
    objects = [{"color": "red", "shape": "circle"}, {"color": "red", "shape": "circle"},
               {"color": "blue", "shape": "star"}]  # fmt: skip
    assert sample_prompts(objects) == ["a red circle", "a blue star"]
    assert sample_prompts(objects, count=1) == ["a red circle"]
