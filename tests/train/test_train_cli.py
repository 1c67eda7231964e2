"""``vlp pretrain`` end to end on a real recipe (clip-tiny) and ShapesWorld (the ``shapes`` fixture of
conftest.py), and pretrained weights into a fresh model (the fine-tuning start)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from vlp.cli import main
from vlp.io.checkpoints import load_safetensors
from vlp.train.jobs import load_init_weights
from vlp.train.logging import read_metrics


def _pretrain(shapes, out, *extra: str) -> int:
    return main(
        [
            "pretrain", "clip-tiny", "--out", str(out), "--tokenizer", str(shapes / "tok"),
            "--set", f"data.root={shapes / 'data'}", "--set", "model.text.vocab_size=120",
            "--set", "train.batch_size=8", "--set", "train.num_workers=0", "--set", "train.progress=false",
            "--set", "train.log_every=1", "--set", "train.checkpoint_every=2", *extra,
        ]
    )  # fmt: skip


def test_pretrain_resume_and_init_from_the_run(shapes, tmp_path, capsys):
    run = tmp_path / "clip"
    assert _pretrain(shapes, run, "--steps", "4") == 0
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3, 4]
    assert "final loss" in capsys.readouterr().err

    assert _pretrain(shapes, run, "--steps", "4") == 2  # refuses to overwrite the run
    assert "already holds a run; pass --resume" in capsys.readouterr().err

    assert _pretrain(shapes, run, "--steps", "6", "--resume") == 0
    assert "resumed from" in capsys.readouterr().err
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["start_step"] == 4 and summary["step"] == 6

    # a pretraining run's weights sit under "model." (the Pretraining wrapper); a fresh model takes them
    import vlp

    model = vlp.create_model("clip-tiny", **{"model.text.vocab_size": 120})
    missing, _ = load_init_weights(model, run)
    assert missing == []
    saved = load_safetensors(run / "checkpoints" / "step_00000006" / "model.safetensors")
    for name, value in model.state_dict().items():
        assert torch.equal(value, saved[f"model.{name}"]), name


def test_pretraining_starts_from_another_runs_image_tower(shapes, tmp_path):
    """train.init + init_parts [vision]: the image tower starts from the other run, the rest fresh."""
    donor = tmp_path / "donor"
    assert _pretrain(shapes, donor, "--steps", "2", "--set", "train.seed=7") == 0
    run = tmp_path / "run"
    args = ("--steps", "1", "--set", "optim.lr=1e-12", "--set", f"train.init={donor}")
    assert _pretrain(shapes, run, *args, "--set", "train.init_parts=[vision]") == 0
    fresh = tmp_path / "fresh"
    assert _pretrain(shapes, fresh, "--steps", "1", "--set", "optim.lr=1e-12") == 0
    given = load_safetensors(donor / "checkpoints" / "step_00000002" / "model.safetensors")
    started = load_safetensors(run / "checkpoints" / "step_00000001" / "model.safetensors")
    plain = load_safetensors(fresh / "checkpoints" / "step_00000001" / "model.safetensors")
    vision = [k for k in given if k.startswith("model.vision.") and k.endswith("weight")]
    text = [k for k in given if k.startswith("model.text.") and k.endswith("weight")]
    assert vision and text
    for k in vision:  # lr 1e-12: one step moves nothing measurable
        assert torch.allclose(started[k], given[k], atol=1e-6), k
    for k in text:
        assert torch.allclose(started[k], plain[k], atol=1e-6), k
    assert not all(torch.allclose(given[k], plain[k]) for k in text)  # the seeds differ: a real check
    # --tokenizer is recorded, so later commands find the tokenizer without it
    saved = yaml.safe_load((run / "recipe.yaml").read_text())
    assert saved["model"]["tokenizer"] == str((shapes / "tok").resolve())


def test_init_parts_that_match_nothing_are_refused(shapes, tmp_path, capsys):
    donor = tmp_path / "donor"
    assert _pretrain(shapes, donor, "--steps", "1") == 0
    extra = ("--set", f"train.init={donor}", "--set", "train.init_parts=[visoin]")
    assert _pretrain(shapes, tmp_path / "x", "--steps", "1", *extra) == 2
    assert "holds no weight under visoin (init_parts)" in capsys.readouterr().err
    assert _pretrain(shapes, tmp_path / "y", "--steps", "1", "--set", "train.init_parts=[vision]") == 2
    assert "needs init" in capsys.readouterr().err


def test_unknown_recipe_key_fails_before_training(shapes, tmp_path, capsys):
    assert _pretrain(shapes, tmp_path / "x", "--set", "train.stepz=3") == 2
    assert "train.stepz: unknown key" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_init_weights_of_another_shape_are_refused(shapes, tmp_path):
    import vlp
    from vlp.config import ConfigError

    run = tmp_path / "clip"
    assert _pretrain(shapes, run, "--steps", "2") == 0
    with pytest.raises(ConfigError, match=r"shapes do not fit the model: text\.\S+ \(120, 32\) vs \(1000, 32\)"):
        load_init_weights(vlp.create_model("clip-tiny"), run)


def test_finetune_starts_from_pretrained_weights(shapes, tmp_path, monkeypatch, capsys):
    import vlp.tasks
    from vlp.data import build_loader
    from vlp.objectives import Pretraining

    seen = {}

    def build_finetuning(task, recipe, model, tokenizer, *, rank, world_size):
        # a task builder as vlp.tasks will provide: here contrastive tuning on the task's data
        seen["task"], seen["weights"] = task, {k: v.clone() for k, v in model.state_dict().items()}
        loader = build_loader(
            recipe.data, "train", tokenizer, recipe.train.batch_size, rank=rank, world_size=world_size
        )
        return Pretraining(model, {"itc": {"weight": 1.0}}), loader

    monkeypatch.setattr(vlp.tasks, "build_finetuning", build_finetuning, raising=False)
    pretrained = tmp_path / "clip"
    assert _pretrain(shapes, pretrained, "--steps", "2") == 0
    task_recipe = tmp_path / "retrieval.yaml"
    task_recipe.write_text(
        "base: clip-tiny\ntask: {type: retrieval}\n"
        f"init: {pretrained}\n"
        f"data: {{root: {shapes / 'data'}}}\n"
        "model: {text: {type: bert, vocab_size: 120, dim: 32, layers: 2, heads: 2, mlp_dim: 128, max_positions: 64,"
        " dropout: 0.0, eps: 1.0e-5, norm_first: true, causal: true, final_norm: true, embed_norm: false,"
        " type_vocab_size: 0, pooling: eos}}\n"
        "optim: {module_lr: {model.vision: 1.0e-5}}\n"
        "train: {steps: 2, batch_size: 8, num_workers: 0, progress: false, log_every: 1}\n"
    )
    out = tmp_path / "ft"
    assert main(["finetune", str(task_recipe), "--out", str(out), "--tokenizer", str(shapes / "tok")]) == 0
    assert seen["task"] == {"type": "retrieval"}
    pretrained_weights = load_safetensors(pretrained / "checkpoints" / "step_00000002" / "model.safetensors")
    for name, value in seen["weights"].items():
        assert torch.equal(value, pretrained_weights[f"model.{name}"]), name
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2]
    import yaml

    saved = yaml.safe_load((out / "recipe.yaml").read_text())
    assert saved["task"] == {"type": "retrieval"} and saved["init"] == str(pretrained)


def test_pretrain_resume_on_a_folder_without_a_checkpoint_fails_clearly(shapes, tmp_path, capsys):
    run = tmp_path / "never-started"
    assert _pretrain(shapes, run, "--steps", "2", "--resume") == 2
    err = capsys.readouterr().err
    assert f"{run}: --resume found no checkpoint to continue from" in err and "drop --resume" in err
    assert not run.exists()  # refused before anything was built or written
