"""``vlp pretrain`` / ``finetune`` / ``eval`` on bad input: a diverging run, truncated weights, a resume
with another recipe, data that fails validation. Each ends with one clear line and no traceback, and
leaves the run folder as it was."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from vlp.cli import main
from vlp.io.checkpoints import tensors_to_safetensors
from vlp.train.logging import read_metrics
from vlp.train.run_dir import RUN_ARTIFACTS

TASK_RECIPES = Path(__file__).parents[2] / "src" / "vlp" / "tasks" / "recipes"


def _pretrain(shapes: Path, recipe: str, out: Path, *extra: str, data: Path | None = None) -> int:
    return main(
        [
            "pretrain", recipe, "--out", str(out), "--tokenizer", str(shapes / "tok"),
            "--set", f"data.root={data or shapes / 'data'}", "--set", "model.text.vocab_size=120",
            "--set", "train.batch_size=8", "--set", "train.num_workers=0", "--set", "train.progress=false",
            "--set", "train.log_every=1", "--set", "train.tensorboard=false", *extra,
        ]
    )  # fmt: skip


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_albef_with_nan_weights_skips_steps_then_aborts_without_a_traceback(shapes, tmp_path, capsys):
    """ITM's hard negatives are drawn from the ITC similarities: NaN weights made them NaN and
    torch.multinomial raised, so the run died before the non-finite guard could skip the step."""
    import vlp

    model = vlp.create_model("albef-tiny", **{"model.text.vocab_size": 120})
    poisoned = {
        k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in model.state_dict().items()
    }
    (tmp_path / "nan.safetensors").write_bytes(tensors_to_safetensors(poisoned))
    run = tmp_path / "albef"
    extra = ("--steps", "6", "--set", "train.max_bad_steps=3", "--set", f"train.init={tmp_path / 'nan.safetensors'}")
    assert _pretrain(shapes, "albef-tiny", run, *extra) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "multinomial" not in err
    assert "step 1: non-finite loss or gradient, step skipped (1 in a row;" in err
    assert "step 2: non-finite loss or gradient, step skipped (2 in a row;" in err
    assert "vlp pretrain: aborted (rank 0): loss or gradient was not finite for 3 steps in a row (steps 1..3)" in err
    assert [r["skipped"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2]  # step 3 aborted before its log


def _truncated_model(shapes: Path, tmp_path: Path) -> Path:
    """A save_pretrained folder of clip-tiny whose model.safetensors lost its last 100 bytes."""
    import vlp
    from vlp.text import Tokenizer

    folder = tmp_path / "model"
    model = vlp.create_model("clip-tiny", **{"model.text.vocab_size": 120})
    vlp.save_pretrained(model, folder, tokenizer=Tokenizer.load(shapes / "tok"))
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    return weights


def test_truncated_weights_are_a_clear_error_on_every_path(shapes, tmp_path, capsys):
    weights = _truncated_model(shapes, tmp_path)
    expected = f"{weights}: truncated: the header describes"

    assert main(["eval", "retrieval", "--model", str(weights.parent), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vlp eval: {expected}") and "Traceback" not in err

    assert _pretrain(shapes, "clip-tiny", tmp_path / "run", "--steps", "1", "--set", f"train.init={weights}") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vlp pretrain: {expected}") and "Traceback" not in err
    assert not (tmp_path / "run").exists()

    task = [str(TASK_RECIPES / "tagging-albef-tiny.yaml"), "--init", str(weights), "--out", str(tmp_path / "ft")]
    assert main(["finetune", *task, "--tokenizer", str(shapes / "tok"), "--set", f"data.root={shapes / 'data'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vlp finetune: {expected}") and "Traceback" not in err


def test_resume_with_another_recipe_or_batch_size_is_refused_before_touching_the_run(shapes, tmp_path, capsys):
    from vlp.tasks.common import load_model

    run = tmp_path / "clip"
    assert _pretrain(shapes, "clip-tiny", run, "--steps", "2") == 0
    before = _files(run)
    capsys.readouterr()

    assert _pretrain(shapes, "clip-tiny", run, "--steps", "4", "--resume", "--set", "train.batch_size=4") == 2
    err = capsys.readouterr().err
    assert "--resume with another recipe than the run's: train.batch_size: 8 in the run, 4 now." in err
    assert "Traceback" not in err and _files(run) == before

    assert _pretrain(shapes, "albef-tiny", run, "--steps", "4", "--resume") == 2
    err = capsys.readouterr().err
    assert "model.name: clip-tiny in the run, albef-tiny now" in err
    assert "model.fusion.type: none in the run, text_cross now" in err
    assert "Traceback" not in err and _files(run) == before
    assert load_model(run).recipe.model.name == "clip-tiny"  # `vlp eval --model RUN` still fits its weights

    # what may change on a resume: the length of the run, the learning rate
    assert _pretrain(shapes, "clip-tiny", run, "--steps", "3", "--resume", "--set", "optim.lr=5e-5") == 0
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3]


def test_data_that_fails_validation_leaves_no_run_behind(shapes, tmp_path, capsys):
    broken = tmp_path / "data"
    shutil.copytree(shapes / "data", broken)
    shutil.rmtree(broken / "images")  # every sample is skipped as a missing file: no batch at all
    run = tmp_path / "run"
    assert _pretrain(shapes, "clip-tiny", run, "--steps", "1", data=broken) == 2
    assert "the data loader yields no batches" in capsys.readouterr().err
    assert not any((run / name).exists() for name in RUN_ARTIFACTS)
    # the fixed command runs without --overwrite
    assert _pretrain(shapes, "clip-tiny", run, "--steps", "1") == 0
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1]
