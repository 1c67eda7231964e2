"""Atomic checkpoints, keep-K, corruption fallback, exact RNG and loader state."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil

import numpy as np
import pytest
import torch
from toy_train import ToyDataset, collate, run_toy

from vlp.config import ConfigError
from vlp.io.checkpoints import CheckpointManager, load_safetensors, tensors_to_safetensors
from vlp.train.loader import ResumableLoader
from vlp.train.logging import read_metrics
from vlp.train.rng import capture_rng, restore_rng, seed_everything


def _state(step: int) -> dict:
    return {"step": step, "optimizer": {"state": {}, "param_groups": []}, "ranks": [{"rng": capture_rng()}]}


def test_save_load_roundtrip_is_weights_only(tmp_path):
    manager = CheckpointManager(tmp_path, keep=3)
    weights = {"a": torch.randn(3, 2), "b": torch.arange(4)}
    path = manager.save(7, weights, _state(7), ema={"a": torch.ones(3, 2)})
    assert path.name == "step_00000007"
    manifest = json.loads((path / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model.safetensors", "ema.safetensors", "state.pt"}
    loaded, state, ema = manager.load(path)
    assert torch.equal(loaded["a"], weights["a"]) and torch.equal(loaded["b"], weights["b"])
    assert torch.equal(ema["a"], torch.ones(3, 2))
    assert state["step"] == 7
    torch.load(path / "state.pt", weights_only=True)  # nothing but tensors and plain data
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]  # temporary folder renamed away


def test_tied_weights_are_stored_once(tmp_path):
    from safetensors import safe_open

    shared = torch.randn(5, 4)
    path = tmp_path / "m.safetensors"
    path.write_bytes(tensors_to_safetensors({"embed.weight": shared, "head.weight": shared, "bias": torch.zeros(5)}))
    with safe_open(str(path), framework="pt") as handle:
        assert sorted(handle.keys()) == ["bias", "embed.weight"]  # the tied copy is an alias, not data
    loaded = load_safetensors(path)
    assert torch.equal(loaded["head.weight"], shared) and torch.equal(loaded["embed.weight"], shared)


def test_keeps_the_last_k_and_ignores_unfinished_writes(tmp_path):
    manager = CheckpointManager(tmp_path, keep=2)
    for step in (1, 2, 3, 4):
        manager.save(step, {"w": torch.full((2,), float(step))}, _state(step))
    assert [s for s, _ in manager.list()] == [4, 3]
    # a crash during a write leaves only a hidden temporary folder, never a half checkpoint
    (tmp_path / ".tmp-step_00000005-99999").mkdir()
    assert manager.latest_valid().name == "step_00000004"


def test_corrupt_newest_falls_back_to_the_one_before(tmp_path):
    manager = CheckpointManager(tmp_path, keep=3)
    for step in (2, 4):
        manager.save(step, {"w": torch.full((64,), float(step))}, _state(step))
    newest = tmp_path / "step_00000004" / "model.safetensors"
    data = bytearray(newest.read_bytes())
    data[-10] ^= 0xFF  # one flipped byte in the weights
    newest.write_bytes(bytes(data))
    warnings = []
    assert manager.latest_valid(warn=warnings.append).name == "step_00000002"
    assert "step_00000004 is corrupt (model.safetensors does not match its sha256" in warnings[0]
    (tmp_path / "step_00000002" / "state.pt").write_bytes(b"truncated")
    warnings.clear()
    assert manager.latest_valid(warn=warnings.append) is None
    assert "state.pt has 9 bytes, manifest says" in warnings[1]


def test_resume_skips_a_corrupt_checkpoint_and_continues_exactly(tmp_path):
    full, broken = tmp_path / "full", tmp_path / "broken"
    run_toy(full, steps=8, dropout=0.1, train={"checkpoint_every": 2})
    shutil.copytree(full, broken)
    (broken / "checkpoints" / "step_00000008" / "state.pt").write_bytes(b"garbage")
    result, _ = run_toy(broken, steps=8, dropout=0.1, resume=True, train={"checkpoint_every": 2})
    assert result.start_step == 6  # fell back to step 6
    a = read_metrics(full / "metrics.jsonl")
    b = read_metrics(broken / "metrics.jsonl")
    assert [r["step"] for r in b] == list(range(1, 9))  # steps 7-8 of the lost part were dropped and redone
    assert [r["loss"] for r in b] == [r["loss"] for r in a]


@pytest.mark.parametrize("broken", ["state.pt", "model.safetensors"])
def test_resume_falls_back_when_a_checkpoint_matches_its_manifest_but_cannot_be_loaded(tmp_path, capsys, broken):
    full, bad = tmp_path / "full", tmp_path / "bad"
    run_toy(full, steps=8, dropout=0.1, train={"checkpoint_every": 2})
    shutil.copytree(full, bad)
    newest = bad / "checkpoints" / "step_00000008"
    data = b"not a torch file" if broken == "state.pt" else (newest / broken).read_bytes()[:-64]  # truncated
    (newest / broken).write_bytes(data)
    manifest = json.loads((newest / "manifest.json").read_text())
    manifest["files"][broken] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (newest / "manifest.json").write_text(json.dumps(manifest))
    assert CheckpointManager(bad / "checkpoints").validate(newest) is None  # it matches its manifest
    capsys.readouterr()

    result, _ = run_toy(bad, steps=8, dropout=0.1, resume=True, train={"checkpoint_every": 2})
    assert result.start_step == 6  # the one before
    err = capsys.readouterr().err
    reason = "cannot be read as a weights-only state file" if broken == "state.pt" else "truncated"
    assert f"warning: checkpoint {newest} cannot be loaded ({newest / broken}: " in err and reason in err
    assert [r["loss"] for r in read_metrics(bad / "metrics.jsonl")] == [
        r["loss"] for r in read_metrics(full / "metrics.jsonl")
    ]


def test_loader_without_state_dict_is_resumed_by_replay(tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    # 8 batches per epoch: the step-10 checkpoint sits 2 batches into the second epoch
    run_toy(full, steps=12, plain_loader=True, train={"checkpoint_every": 10})
    shutil.copytree(full, cut)
    shutil.rmtree(cut / "checkpoints" / "step_00000012")
    result, _ = run_toy(cut, steps=12, plain_loader=True, resume=True, train={"checkpoint_every": 10})
    assert result.start_step == 10
    assert [r["loss"] for r in read_metrics(cut / "metrics.jsonl")] == [
        r["loss"] for r in read_metrics(full / "metrics.jsonl")
    ]
    assert read_metrics(cut / "metrics.jsonl")[-1]["epoch"] == 1


def test_resume_with_every_checkpoint_corrupt_is_an_error(tmp_path):
    run = tmp_path / "run"
    run_toy(run, steps=2)
    (run / "checkpoints" / "step_00000002" / "manifest.json").write_text("{")
    with pytest.raises(ConfigError, match="every checkpoint is corrupt"):
        run_toy(run, steps=4, resume=True)


def test_rng_states_roundtrip_through_a_weights_only_file(tmp_path):
    seed_everything(5)
    state = capture_rng()
    torch.save(state, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.random(), np.random.rand(7), torch.rand(9)  # move every stream on
    restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert again[0] == expected[0] and again[1] == expected[1] and torch.equal(again[2], expected[2])


def _ids(batches) -> list[list[str]]:
    return [[m["id"] for m in b.meta] for b in batches]


def test_loader_resumes_mid_epoch_and_ranks_split_a_big_batch():
    data = ToyDataset(40)
    loader = ResumableLoader(data, 4, collate_fn=collate, seed=3)
    stream = iter(loader)
    head = _ids([next(stream) for _ in range(3)])
    state = loader.state_dict()
    assert state == {"epoch": 0, "samples": 12}
    tail = _ids(list(stream))
    resumed = ResumableLoader(data, 4, collate_fn=collate, seed=3)
    resumed.load_state_dict(state)
    assert _ids(list(resumed)) == tail
    assert len(head) + len(tail) == len(loader) == 10
    # two ranks with batch 2: their k-th batches together are the k-th batch of one rank with batch 4
    ranks = [ResumableLoader(data, 2, collate_fn=collate, seed=3, rank=r, world_size=2) for r in range(2)]
    one = _ids(ResumableLoader(data, 4, collate_fn=collate, seed=3))
    for k, (a, b) in enumerate(zip(*[_ids(r) for r in ranks])):
        assert sorted(a + b) == sorted(one[k])


@pytest.mark.parametrize("layout", ["missing", "empty", "run_without_checkpoints"])
def test_resume_without_a_checkpoint_is_an_error_not_a_fresh_start(tmp_path, layout):
    run = tmp_path / "run"
    if layout != "missing":
        run.mkdir()
    if layout == "run_without_checkpoints":  # a run stopped before its first checkpoint
        (run / "checkpoints").mkdir()
        (run / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    with pytest.raises(ConfigError) as err:
        run_toy(run, steps=2, resume=True)
    message = str(err.value)
    assert f"{run}: --resume found no checkpoint to continue from" in message
    assert f"{run / 'checkpoints'}{os.sep}step_NNNNNNNN" in message and "drop --resume" in message
    # refused before anything was written
    assert not (run / "recipe.yaml").exists() and not (run / "summary.json").exists()
    assert run.exists() == (layout != "missing")
