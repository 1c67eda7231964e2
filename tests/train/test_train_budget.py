"""``train.time_budget_minutes``: the run checkpoints and stops when its budget is spent, the lr decay follows
the budget, and the budget spent survives a resume. ``train.ema_warmup`` caps the EMA decay early on.

The budget's clock is replaced by one that advances exactly 1 s per reading (the engine reads it once at the
start and once per step), so what is tested does not depend on the machine's speed."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from safetensors.torch import load_file
from toy_train import ToyModel, run_toy

from vlp.layers.ema import warmup_decay
from vlp.train import engine
from vlp.train.launch import exit_code
from vlp.train.logging import read_metrics

LR = 1e-2


@pytest.fixture
def one_second_per_step(monkeypatch):
    def clock(kind: str):
        ticks = itertools.count()
        return lambda: float(next(ticks))

    monkeypatch.setattr(engine, "budget_clock", clock)


def test_budget_ends_the_run_with_a_checkpoint_and_anneals_the_lr(tmp_path, one_second_per_step):
    run = tmp_path / "run"
    cosine = {"warmup_steps": 0, "min_lr_ratio": 0.1}
    result, _ = run_toy(run, steps=100, train={"time_budget_minutes": 0.1}, schedule=cosine)
    assert result.stopped_by == "time budget" and result.step == 6  # 6 s of a 6 s budget
    assert result.checkpoint.endswith("step_00000006") and exit_code(result.stopped_by) == 0
    # step k starts with k - 1 s spent: the cosine is at (k - 1) / 6 of its way (by steps it would be (k - 1) / 100)
    for record in read_metrics(run / "metrics.jsonl"):
        k = record["step"]
        expected = LR * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (k - 1) / 6)))
        assert record["lr"] == pytest.approx(expected), k
        assert record["budget_used_s"] == pytest.approx(k)


def test_resume_carries_the_budget_spent(tmp_path, one_second_per_step):
    run = tmp_path / "run"
    run_toy(run, steps=100, train={"time_budget_minutes": 0.1})
    again, _ = run_toy(run, steps=100, resume=True, train={"time_budget_minutes": 0.1})
    assert (again.start_step, again.step, again.stopped_by) == (6, 6, "time budget")  # nothing left to spend
    longer, _ = run_toy(run, steps=100, resume=True, train={"time_budget_minutes": 0.15})
    assert (longer.start_step, longer.step, longer.stopped_by) == (6, 9, "time budget")  # 3 more seconds


def test_steps_still_end_a_run_with_budget_to_spare(tmp_path, one_second_per_step):
    result, _ = run_toy(tmp_path / "run", steps=4, train={"time_budget_minutes": 10.0})
    assert result.stopped_by is None and result.step == 4 and exit_code(None) == 0


def test_warmup_decay_values():
    assert warmup_decay(0.999, 0) == pytest.approx(0.1)
    assert warmup_decay(0.999, 1) == pytest.approx(2 / 11)
    assert warmup_decay(0.999, 10_000) == 0.999  # the cap is reached after 8990 updates
    with pytest.raises(ValueError, match="updates must be >= 0"):
        warmup_decay(0.9, -1)


def test_ema_warmup_shadow_by_hand(tmp_path):
    """Two steps at decay 0.9 with warm-up: the decays are 2/11 and 3/12, from the weights after each step."""
    torch.manual_seed(0)  # run_toy seeds 0 before building the model: the same initial weights
    w0 = {n: p.detach().clone() for n, p in ToyModel().named_parameters()}
    run = tmp_path / "run"
    run_toy(run, steps=2, train={"ema_decay": 0.9, "ema_warmup": True, "checkpoint_every": 1})
    w1 = load_file(run / "checkpoints" / "step_00000001" / "model.safetensors")
    w2 = load_file(run / "checkpoints" / "step_00000002" / "model.safetensors")
    ema = load_file(run / "checkpoints" / "step_00000002" / "ema.safetensors")
    d1, d2 = 2 / 11, 3 / 12
    for name, start in w0.items():
        s1 = d1 * start + (1 - d1) * w1[name]
        torch.testing.assert_close(ema[name], d2 * s1 + (1 - d2) * w2[name], rtol=1e-5, atol=1e-6)
