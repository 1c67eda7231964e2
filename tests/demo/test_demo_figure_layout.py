"""The report's figures and `vlp plot` on made-up runs: sizes that read in a report, and no text drawn over
another text or over a panel (checked with matplotlib's renderer extents)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from figure_checks import overlaps, text_inside_figure
from PIL import Image

from vlp.demo import figures

CAPTIONS = ["there is a red circle on the left of a blue square", "a green cross", "three shapes.",
            "a small yellow star below a big purple triangle"]  # fmt: skip


@pytest.fixture
def drawn(monkeypatch):
    """Figures as the painters leave them, by file name, checked before they are saved and closed."""
    seen = {}
    save = figures._save

    def keep(fig, path):
        seen[path.name if hasattr(path, "name") else str(path)] = {
            "overlaps": overlaps(fig), "outside": text_inside_figure(fig)
        }  # fmt: skip
        return save(fig, path)

    monkeypatch.setattr(figures, "_save", keep)
    return seen


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(8):
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def _run(folder, extra_losses=()):
    folder.mkdir(parents=True)
    with open(folder / "metrics.jsonl", "w") as handle:
        for step in range(1, 101, 5):
            record = {"step": step, "loss": 3.0 / step**0.3, "lr": 1e-3 * min(1.0, step / 20)}
            record.update({name: 1.0 / step**0.2 for name in extra_losses})
            handle.write(json.dumps(record) + "\n")
    return folder


def test_captions_keep_every_rows_reference_next_to_its_image(drawn, images, tmp_path):
    examples = [{"image": images[i], "generated": CAPTIONS[i % 4], "reference": CAPTIONS[(i + 1) % 4] + " again"}
                for i in range(8)]  # fmt: skip
    figures.caption_grid(examples, tmp_path / "captions.png")
    assert drawn["captions.png"] == {"overlaps": [], "outside": []}


def test_heatmap_titles_clear_of_the_row_above(drawn, images, tmp_path):
    rng = np.random.default_rng(1)
    queries = ["red circle", "a big purple triangle", "green cross", "blue square"]
    examples = [{"image": images[i], "query": queries[i % 4], "heat": rng.random((8, 8)), "target": [2, 2, 12, 12],
                 "box": [4, 4, 20, 20]} for i in range(8)]  # fmt: skip
    figures.heatmap_grid(examples, tmp_path / "heatmap.png")
    assert drawn["heatmap.png"] == {"overlaps": [], "outside": []}


@pytest.mark.parametrize("painter", ["box_grid", "vqa_grid"])
def test_other_grids_have_no_overlapping_text(drawn, images, tmp_path, painter):
    key = "expression" if painter == "box_grid" else "question"
    examples = [{"image": images[i], key: CAPTIONS[i % 4], "target": [2, 2, 12, 12], "predicted": [4, 4, 20, 20],
                 "answer": "blue"} for i in range(8)]  # fmt: skip
    if painter == "vqa_grid":
        for example in examples:
            example["predicted"] = "red"
    getattr(figures, painter)(examples, tmp_path / f"{painter}.png")
    assert drawn[f"{painter}.png"] == {"overlaps": [], "outside": []}


def test_loss_curves_are_a_grid_of_panels_three_per_row(drawn, tmp_path):
    runs = {f"fine-tune: task {i}": _run(tmp_path / f"run{i}") for i in range(5)}
    runs["pretraining (ITC + ITM + MLM)"] = _run(tmp_path / "pre", ("loss_itc", "loss_itm", "loss_mlm"))
    path = figures.loss_curves(runs, tmp_path / "loss_curves.png")
    width, height = Image.open(path).size
    # 6 panels, 3 per row: 2 rows, so no 2298 x 340 strip; about as wide as three 4.2-inch panels at 110 dpi
    assert 1200 < width < 1500 and height > width / 2.5
    assert drawn["loss_curves.png"] == {"overlaps": [], "outside": []}


def test_vlp_plot_title_clear_of_the_panel_titles(tmp_path):
    from vlp.train.logging import read_metrics
    from vlp.train.plot import curves, curves_figure

    run = _run(tmp_path / "a run with a long name (ITC + ITM + MLM)", ("loss_itc",))
    for n in (1, 3, 4):  # one row, a full row, two rows
        series = dict(list(curves(read_metrics(run / "metrics.jsonl")).items())[:n])
        fig = curves_figure(series, run.name, smoothing=0.6)
        assert overlaps(fig) == [] and text_inside_figure(fig) == [], n


def test_retrieval_grid_queries_and_ranks_clear_of_the_images(drawn, images, tmp_path):
    examples = [{"query": CAPTIONS[i], "images": images[:5], "hits": [True, False, True, False, False]}
                for i in range(3)]  # fmt: skip
    figures.retrieval_grid(examples, tmp_path / "retrieval.png")
    assert drawn["retrieval.png"] == {"overlaps": [], "outside": []}
