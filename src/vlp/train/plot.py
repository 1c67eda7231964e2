"""``curves.png`` of a run: loss, learning rate and every logged metric over steps."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from vlp.config import ConfigError
from vlp.train.logging import METRICS_FILE, read_metrics

# bookkeeping columns of metrics.jsonl that are not curves
_NOT_CURVES = {"step", "epoch", "elapsed_s", "skipped"}


def smooth(values: list[float], weight: float) -> list[float]:
    """TensorBoard's debiased exponential moving average (weight 0 = raw values).

    Non-finite values are passed through without entering the average.
    """
    if not 0 <= weight < 1:
        raise ValueError(f"smoothing must lie in [0, 1), got {weight}")
    out, avg, norm = [], 0.0, 0.0
    for value in values:
        if not math.isfinite(value):
            out.append(value)
            continue
        avg = weight * avg + (1 - weight) * value
        norm = weight * norm + (1 - weight)
        out.append(avg / norm)
    return out


def curves(records: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """name -> (steps, values) for every numeric column; ``loss`` first, then ``lr``, then by name."""
    names: list[str] = []
    for record in records:
        for key, value in record.items():
            if key not in _NOT_CURVES and key not in names and isinstance(value, (int, float)):
                if not isinstance(value, bool):
                    names.append(key)
    order = sorted(names, key=lambda n: (n != "loss", n != "lr", n))
    out = {}
    for name in order:
        pairs = [(int(r["step"]), float(r[name])) for r in records if isinstance(r.get(name), (int, float))]
        out[name] = ([s for s, _ in pairs], [v for _, v in pairs])
    return out


def curves_figure(series: dict[str, tuple[list[int], list[float]]], title: str, smoothing: float = 0.6) -> Any:
    """A matplotlib figure of :func:`curves` output: one panel per curve, three per row, ``title`` above."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    cols = min(3, len(series))
    rows = math.ceil(len(series) / cols)
    # constrained layout gives the figure title a strip of its own (tight_layout let it overlap a panel's title)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows + 0.4), squeeze=False, layout="constrained")
    for ax, (name, (steps, values)) in zip(axes.flat, series.items()):
        if smoothing > 0 and name != "lr" and len(values) > 1:
            ax.plot(steps, values, color="tab:blue", alpha=0.25, linewidth=1)
            ax.plot(steps, smooth(values, smoothing), color="tab:blue", linewidth=1.5)
        else:
            ax.plot(steps, values, color="tab:blue", linewidth=1.5)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(series) :]:
        ax.axis("off")
    fig.suptitle(title)
    return fig


def plot_run(run_dir: str | Path, out: str | Path | None = None, smoothing: float = 0.6) -> Path:
    """Draw the curves of ``RUN_DIR/metrics.jsonl`` into ``out`` (default ``RUN_DIR/curves.png``)."""
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    metrics = run_dir / METRICS_FILE
    if not metrics.is_file():
        raise ConfigError(f"{metrics}: not found; is {run_dir} a run folder written by vlp pretrain/finetune?")
    records = [r for r in read_metrics(metrics) if "step" in r]
    if not records:
        raise ConfigError(f"{metrics}: holds no logged steps yet")
    fig = curves_figure(curves(records), run_dir.name, smoothing)
    target = Path(out) if out else run_dir / "curves.png"
    fig.savefig(target, dpi=100)
    plt.close(fig)
    return target
