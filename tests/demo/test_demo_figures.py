"""report.md from given rows, timings and figures; generated images from a (tiny, untrained)
text-to-image model folder; the weak-score notes."""

from __future__ import annotations

import json

import pytest
import torch

from vlp.demo.generation import generated_images
from vlp.demo.pipeline import weak_rows
from vlp.demo.report import write_report
from vlp.demo.table import ResultRow


def test_report_links_figures_relative_and_totals_timings(tmp_path):
    figures = {"loss_curves": tmp_path / "figures" / "loss_curves.png", "vqa": tmp_path / "figures" / "vqa.png"}
    rows = [ResultRow("VQA (fine-tuned)", "VQA accuracy", 54.4, 36.5)]
    timings = [{"step": "a", "wall_s": 1.25, "cpu_s": 1.0}, {"step": "b", "wall_s": 2.5, "cpu_s": 0.5}]
    path = write_report(tmp_path, rows, timings, figures, {"images": 10, "threads": 1}, ["a note"], "vlp demo --quick")
    text = path.read_text()
    assert (
        "![Training curves](figures/loss_curves.png)" in text
        and "![Visual question answering](figures/vqa.png)" in text
    )
    assert "![Captions]" not in text  # no figure, no section
    assert "| VQA (fine-tuned) | VQA accuracy |  54.4 |   36.5 |     1.5x |" in text
    total = next(line for line in text.splitlines() if line.startswith("| total"))
    assert [c.strip() for c in total.split("|")[1:-1]] == ["total", "3.8", "1.5"]
    assert "- a note" in text and "`vlp demo --quick`" in text and "images=10, threads=1" in text


def test_weak_rows_name_scores_near_chance():
    rows = [ResultRow("zero-shot classification", "shape top-1", 23.7, 22.6), ResultRow("VQA", "acc", 60.0, 36.5),
            ResultRow("captioning", "CIDEr", 5.0, None), ResultRow("refexp", "acc@0.5", 2.5, 1.2),
            ResultRow("retrieval", "R@1", 2.2, 0.4)]  # fmt: skip
    # 23.7 is under 1.5 x 22.6; 2.5 is twice 1.2 but only 1.3 points above it; 2.2 is 5.5 x 0.4
    notes = weak_rows(rows)
    assert len(notes) == 2 and notes[0].startswith("zero-shot classification, shape top-1: 23.7 against")
    assert notes[1].startswith("refexp, acc@0.5: 2.5 against a chance level of 1.2")


def test_generated_images_from_a_generator_folder(tmp_path):
    from vlp.generation.model import TextToImageConfig, TextToImageModel, save_generator
    from vlp.generation.unet import UNetConfig
    from vlp.text import Tokenizer
    from vlp.text.encoder import BertTextConfig

    torch.manual_seed(0)
    tok = Tokenizer.train(["a red circle", "a blue square", "a green star"], vocab_size=40)
    cfg = TextToImageConfig(
        image_size=16,
        text=BertTextConfig(vocab_size=tok.vocab_size, dim=16, layers=1, heads=2, mlp_dim=32, max_positions=16,
                            dropout=0.0),
        unet=UNetConfig(channels=8, channel_mult=(1, 2), self_attention_levels=[], cross_attention_levels=[1],
                        heads=2, groups=4),
    )  # fmt: skip
    model = TextToImageModel(cfg)
    model.tokenizer = tok
    folder = save_generator(model, tmp_path / "gen")
    png = generated_images(folder, ["a red circle", "a blue square"], tmp_path / "generation.png", steps=2)
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 1000
    with pytest.raises(FileNotFoundError):
        generated_images(tmp_path / "missing", ["a red circle"], tmp_path / "x.png")


def test_report_prints_row_notes_under_the_table(tmp_path):
    note = "equals acc@IoU0.5: the candidates are the image's object boxes, which never overlap"
    rows = [ResultRow("referring expressions (fine-tuned)", "acc@IoU0.5", 40.0, 20.0),
            ResultRow("referring expressions (fine-tuned)", "mean IoU", 40.0, 20.0, note)]  # fmt: skip
    text = write_report(tmp_path, rows, [{"step": "a", "wall_s": 1.0, "cpu_s": 1.0}], {}, {}).read_text()
    lines = text.splitlines()
    last_row = max(i for i, line in enumerate(lines) if line.startswith("| referring"))
    assert (
        lines[last_row + 1] == "" and lines[last_row + 2] == f"- referring expressions (fine-tuned), mean IoU: {note}"
    )


def test_progress_lines_every_tenth_of_a_run(monkeypatch, tmp_path):
    """The demo's pretraining reports to its log from the records the run writes to metrics.jsonl."""
    from types import SimpleNamespace

    import vlp.train.engine
    from vlp.demo import training

    lines = []

    class Trainer:  # stands in for vlp.train.engine.Trainer: logs a record every 25 of 200 steps
        def __init__(self, *args, run_dir, **kwargs):
            self.path = run_dir / "metrics.jsonl"

        def fit(self):
            with open(self.path, "w") as handle:
                for step in range(25, 201, 25):
                    record = {"step": step, "loss": 1.0 / step, "loss_itc": 0.5, "samples_per_s": 80.0,
                              "elapsed_s": step / 10}  # fmt: skip
                    handle.write(json.dumps(record) + "\n")
                    handle.flush()
            return "done"

    job = SimpleNamespace(module=None, loader=None, train=SimpleNamespace(steps=200), optim=None, schedule=None,
                          recipe={})  # fmt: skip
    monkeypatch.setattr(vlp.train.engine, "Trainer", Trainer)
    (tmp_path / "metrics.jsonl").write_text('{"step": 999, "loss": 1}\n')  # an earlier run's: not reported
    assert training._fit(job, tmp_path, progress=lines.append, lines=4) == "done"
    assert [line.split()[1] for line in lines] == ["50/200", "100/200", "150/200", "200/200"]
    assert lines[0] == "    step 50/200  loss 0.020 (itc 0.500)  80 samples/s  5 s"
