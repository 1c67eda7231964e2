"""End to end on a tiny ShapesWorld: ``vlp finetune`` the BLIP captioning recipe for a few steps,
``vlp eval captioning`` writes results.json + captions.json, and the reported metrics equal the
caption metrics of those captions against the references read from the annotation file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from shapes_task_helpers import finetune, make_world, pretrained, train_tokenizer

from vlp.cli import main
from vlp.metrics import caption_metrics
from vlp.tasks import captioning
from vlp.tasks.common import load_model


def test_blip_captioning_finetune_then_eval(tmp_path):
    world = make_world(tmp_path)
    init = pretrained("captioning-blip-tiny", tmp_path / "pre", train_tokenizer(world, tmp_path / "tok"))
    run = finetune("captioning-blip-tiny", init, world, tmp_path / "run", 2)
    out = tmp_path / "eval"
    code = main(["eval", "captioning", "--model", str(run), "--split", "val", "--out", str(out), "--backend",
                 "builtin", "--strategy", "beam", "--num-beams", "2", "--max-new-tokens", "8"])  # fmt: skip
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert {"task", "model", "split", "data", "settings", "metrics"} <= set(results)
    metrics = results["metrics"]
    assert results["task"] == "captioning" and metrics["backend"] == "builtin" and metrics["n_images"] == 6
    assert results["settings"]["prompt"] == "" and results["settings"]["num_beams"] == 2  # the recipe's prompt
    captions = {c["image_id"]: c["caption"] for c in json.loads((out / "captions.json").read_text())}
    references = {
        Path(item["image"]).stem: item["caption"]
        for item in json.loads((world / "annotations" / "captions_val.json").read_text())
    }
    assert set(captions) == set(references)
    expected = caption_metrics(captions, {k: references[k] for k in captions}, backend="builtin")
    for key in ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"):
        assert metrics[key] == pytest.approx(expected[key]), key
    # the Python API on image paths gives the same captions as the command
    loaded = load_model(run)
    paths = [world / item["image"] for item in json.loads((world / "annotations" / "captions_val.json").read_text())]
    again = captioning.caption(loaded.model, loaded.tokenizer, paths, "beam", prompt="", num_beams=2, max_new_tokens=8)
    assert again == [captions[p.stem] for p in paths]
