"""vlp predict ground with a fine-tuned box head: the boxes refexp.locate gives, in pixels of each photo."""

from __future__ import annotations

import torch
from predict_helpers import lines, run_predict

import vlp
from vlp.io.folders import load_model
from vlp.tasks import refexp
from vlp.tasks.refexp.head import ensure_refexp_head
from vlp.text import Tokenizer


def test_ground_with_a_box_head_matches_locate(photos, capsys, tmp_path):
    torch.manual_seed(0)
    model = vlp.create_model("vilt-tiny")
    ensure_refexp_head(model, "box")  # random weights: any box, but the same one both ways
    tokenizer = Tokenizer.train(["the red circle left of a blue square", "a green triangle"], vocab_size=200)
    vlp.save_pretrained(model, tmp_path / "vilt", tokenizer=tokenizer)
    code, out, _ = run_predict(capsys, "ground", tmp_path / "vilt", *photos[:3], "--text", "the red circle")
    assert code == 0
    loaded = load_model(tmp_path / "vilt")
    found = lines(out)
    assert [r["method"] for r in found] == ["refexp"] * 3
    for record, photo in zip(found, photos):
        box = refexp.locate(loaded.model, loaded.tokenizer, photo, "the red circle", mode="box")
        assert record["path"] == str(photo) and record["box"] == [round(float(v), 2) for v in box]
    code, _, err = run_predict(capsys, "ground", tmp_path / "vilt", photos[0], "--text", "x", "--method", "heatmap")
    assert code == 2 and "dual-encoder" in err
