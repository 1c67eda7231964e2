"""The training loop on a small real model: accumulation, guards, precision, switches, logs."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from toy_train import ToyDataset, ToyModel, collate, run_toy

from vlp.config import ConfigError
from vlp.layers.ema import WeightEMA
from vlp.train.guards import TrainingAborted
from vlp.train.loader import ResumableLoader
from vlp.train.logging import read_metrics
from vlp.train.schedule import lr_multiplier


def losses(run_dir) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl")]


def test_metrics_log_every_step_with_lr_from_the_schedule(tmp_path):
    result, model = run_toy(tmp_path / "run", steps=6, schedule={"name": "cosine", "warmup_steps": 2})
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    for r in records:
        assert {"loss", "lr", "samples_per_s", "grad_norm", "acc", "skipped", "epoch"} <= set(r)
        assert r["samples_per_s"] > 0
        # logged step k used the lr of 0-based step k - 1
        cfg = type("S", (), {"name": "cosine", "warmup_steps": 2, "min_lr_ratio": 0.0})
        assert r["lr"] == pytest.approx(1e-2 * lr_multiplier(r["step"] - 1, 6, cfg))
    assert result.step == 6 and result.loss == pytest.approx(records[-1]["loss"])
    assert model.after_steps == 6  # after_step() once per optimizer step
    assert (tmp_path / "run" / "summary.json").is_file()
    assert (tmp_path / "run" / "checkpoints" / "step_00000006" / "manifest.json").is_file()


def test_warmup_longer_than_the_run_is_warned_with_both_numbers(tmp_path, capsys):
    run_toy(tmp_path / "short", steps=3, lr=1e-2, schedule={"warmup_steps": 50})
    err = capsys.readouterr().err
    assert "warning: schedule.warmup_steps=50 is more than train.steps=3: the run ends during warm-up" in err
    assert "never reaches the peak lr optim.lr=0.01 (at most 6% of it)" in err
    lrs = [r["lr"] for r in read_metrics(tmp_path / "short" / "metrics.jsonl")]
    assert lrs == pytest.approx([1e-2 * k / 50 for k in (1, 2, 3)])  # what the warning says: 3/50 at most
    run_toy(tmp_path / "full", steps=3, lr=1e-2, schedule={"warmup_steps": 3})  # the peak at the last step
    assert "warmup_steps" not in capsys.readouterr().err


def test_grad_accumulation_equals_one_big_batch(tmp_path):
    run_toy(tmp_path / "big", steps=4, batch_size=8, grad_accum=1)
    run_toy(tmp_path / "acc", steps=4, batch_size=4, grad_accum=2)
    big, acc = read_metrics(tmp_path / "big" / "metrics.jsonl"), read_metrics(tmp_path / "acc" / "metrics.jsonl")
    # the same loss at every step (so the same weights before it) and the same gradient norm
    for key in ("loss", "grad_norm"):
        torch.testing.assert_close([r[key] for r in acc], [r[key] for r in big], rtol=1e-5, atol=1e-6)
    assert big[0]["loss"] != big[1]["loss"]  # the weights did move


def test_non_finite_loss_skips_the_step_and_counts_it(tmp_path):
    nan_ids = (3, 40)
    result, model = run_toy(tmp_path / "run", steps=8, nan_ids=nan_ids, train={"max_bad_steps": 3})
    # which steps see a broken sample, computed from the same (seeded) loader on its own
    loader = ResumableLoader(ToyDataset(64), 8, collate_fn=collate, seed=0)
    bad_steps = [
        k + 1 for k, batch in enumerate(loader) if {f"toy-{i}" for i in nan_ids} & {m["id"] for m in batch.meta}
    ]
    assert len(bad_steps) == 2
    assert result.skipped_steps == 2
    assert model.after_steps == 8 - 2  # skipped steps do not reach the optimizer
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records if r["loss"] is None] == bad_steps  # NaN is logged as null
    assert records[-1]["skipped"] == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_non_finite_loss_in_a_row_aborts_naming_step_and_samples(tmp_path):
    with pytest.raises(TrainingAborted) as err:
        run_toy(tmp_path / "run", steps=8, nan_ids=tuple(range(64)), train={"max_bad_steps": 3})
    message = str(err.value)
    assert "3 steps in a row (steps 1..3)" in message
    loader = ResumableLoader(ToyDataset(64), 8, collate_fn=collate, seed=0)
    third = [m["id"] for m in list(loader)[2].meta]
    assert ", ".join(third) in message  # the samples of the last bad step, by id


def test_out_of_memory_ends_with_a_hint(tmp_path, monkeypatch):
    def greedy(self, batch):
        return torch.empty(2**50, dtype=torch.uint8), {}  # more than any machine has: a real allocator failure

    monkeypatch.setattr(ToyModel, "forward", greedy)
    with pytest.raises(TrainingAborted, match=r"ran out of memory at step 1 with train.batch_size=8") as err:
        run_toy(tmp_path / "run", steps=2)
    assert "grad_accum=2" in str(err.value) and "grad_checkpointing" in str(err.value)


def test_existing_run_is_never_overwritten_by_accident(tmp_path):
    run = tmp_path / "run"
    run_toy(run, steps=2)
    (run / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"already holds a run; pass --resume.*--overwrite"):
        run_toy(run, steps=2)
    with pytest.raises(ConfigError, match="exclude each other"):
        run_toy(run, steps=2, resume=True, overwrite=True)
    run_toy(run, steps=3, overwrite=True)
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3]
    assert (run / "notes.txt").read_text() == "mine"  # only the run's own files are replaced


def test_bf16_autocast_runs_on_cpu(tmp_path):
    run_toy(tmp_path / "fp32", steps=2)
    run_toy(tmp_path / "bf16", steps=2, train={"precision": "bf16"})
    fp32, bf16 = losses(tmp_path / "fp32"), losses(tmp_path / "bf16")
    assert bf16[0] != fp32[0]  # autocast really ran the matmuls in bf16 ...
    assert bf16[0] == pytest.approx(fp32[0], rel=2e-2)  # ... and the result is still the same loss


def test_fp16_needs_a_gpu(tmp_path):
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        run_toy(tmp_path / "run", steps=1, train={"precision": "fp16"})


def test_gradient_checkpointing_switch_gives_the_same_training(tmp_path):
    run_toy(tmp_path / "plain", steps=3)
    _, model = run_toy(tmp_path / "ckpt", steps=3, train={"grad_checkpointing": True})
    assert model.encoder.grad_checkpointing is True
    torch.testing.assert_close(losses(tmp_path / "ckpt"), losses(tmp_path / "plain"), rtol=1e-6, atol=1e-7)


def test_frozen_parts_do_not_change(tmp_path):
    torch.manual_seed(0)
    initial = {n: p.detach().clone() for n, p in ToyModel().named_parameters()}
    _, model = run_toy(tmp_path / "run", steps=3, optim={"freeze": ["encoder.layers.0", "pos_embed"]})
    for name, param in model.named_parameters():
        unchanged = torch.equal(param.detach(), initial[name])
        assert unchanged == name.startswith(("encoder.layers.0.", "pos_embed")), name


def test_ctrl_c_writes_a_checkpoint_and_stops(tmp_path, monkeypatch):
    forward = ToyModel.forward
    calls = []

    def interrupted(self, batch):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)  # as if the user pressed Ctrl-C during step 3
        return forward(self, batch)

    monkeypatch.setattr(ToyModel, "forward", interrupted)
    # A shell starts background jobs with SIGINT ignored: the handler to give back is whatever was there.
    before = signal.getsignal(signal.SIGINT)
    result, _ = run_toy(tmp_path / "run", steps=20)
    assert result.stopped_by == "SIGINT" and result.step == 3  # step 3 finishes, then the run stops
    assert result.checkpoint.endswith("step_00000003")
    assert signal.getsignal(signal.SIGINT) is before  # handlers are given back


def test_ema_follows_the_formula():
    model = torch.nn.Linear(2, 1)
    ema = WeightEMA(model.named_parameters(), decay=0.9)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update()
    torch.testing.assert_close(ema.state_dict()["weight"], 0.9 * start + 0.1 * (start + 1.0))


def test_ema_weights_are_checkpointed(tmp_path):
    run_toy(tmp_path / "run", steps=2, train={"ema_decay": 0.5})
    from safetensors.torch import load_file

    ema = load_file(tmp_path / "run" / "checkpoints" / "step_00000002" / "ema.safetensors")
    assert set(ema) == {n for n, _ in ToyModel().named_parameters()}


def test_tensorboard_events_when_installed(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_toy(tmp_path / "run", steps=3)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    logged = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert logged == [(r["step"], pytest.approx(r["loss"])) for r in read_metrics(tmp_path / "run" / "metrics.jsonl")]
