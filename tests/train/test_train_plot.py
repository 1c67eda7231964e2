"""``vlp plot RUN_DIR``: smoothing, curve selection and the PNG."""

from __future__ import annotations

import pytest
from toy_train import run_toy

from vlp.cli import main
from vlp.train.logging import read_metrics
from vlp.train.plot import curves, smooth


def test_smoothing_is_tensorboards_debiased_ema():
    # by hand, weight 0.5: 1/1 = 1; (0.25 + 1)/0.75; (0.625 + 1.5)/0.875
    assert smooth([1.0, 2.0, 3.0], 0.5) == pytest.approx([1.0, 1.25 / 0.75, 2.125 / 0.875])
    assert smooth([4.0, 1.0], 0.0) == [4.0, 1.0]
    nan = float("nan")
    out = smooth([1.0, nan, 3.0], 0.5)  # a skipped (non-finite) step does not poison the curve
    assert out[0] == 1.0 and out[1] != out[1] and out[2] == pytest.approx(1.75 / 0.75)
    with pytest.raises(ValueError, match=r"smoothing must lie in \[0, 1\)"):
        smooth([1.0], 1.0)


def test_curves_put_loss_and_lr_first():
    records = [{"step": 1, "loss": 2.0, "lr": 0.1, "acc": 0.5, "epoch": 0}, {"step": 2, "loss": 1.0, "lr": 0.2}]
    series = curves(records)
    assert list(series) == ["loss", "lr", "acc"]
    assert series["loss"] == ([1, 2], [2.0, 1.0])
    assert series["acc"] == ([1], [0.5])


def test_vlp_plot_writes_curves_png(tmp_path, capsys):
    run = tmp_path / "run"
    run_toy(run, steps=5)
    assert main(["plot", str(run)]) == 0
    png = run / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(png) in capsys.readouterr().out
    names = list(curves(read_metrics(run / "metrics.jsonl")))
    assert names == ["loss", "lr", "acc", "grad_norm", "samples_per_s"]
    import matplotlib.image

    height, width, _ = matplotlib.image.imread(png).shape
    assert width > height > 300  # 2 rows x 3 columns of panels


def test_vlp_plot_on_a_folder_without_a_run(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    assert f"{tmp_path / 'metrics.jsonl'}: not found" in capsys.readouterr().err
