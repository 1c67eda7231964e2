"""`vlp train-generation`, `vlp generate` and `vlp eval generation` from the command line (tiny sizes)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vlp.cli import build_parser, main
from vlp.config import ConfigError
from vlp.generation.train import load_generation_recipe
from vlp.train.schedule import lr_multiplier

TINY = [
    "model.image_size=16",
    "model.text.dim=16",
    "model.text.layers=1",
    "model.text.heads=2",
    "model.text.mlp_dim=32",
    "model.unet.channels=8",
    "model.unet.heads=2",
    "model.unet.groups=4",
    "model.unet.patch_size=1",
    "model.diffusion.timesteps=50",
    "data.image_size=16",
    "data.tokenizer_captions=50",
    "train.steps=3",
    "train.batch_size=2",
    "train.threads=0",
    "train.log_every=1",
    "train.sample_steps=2",
    "train.sample_prompts=[a red circle]",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    args = ["train-generation", "t2i-shapes", "--out", str(out), "--no-progress"]
    assert main(args + [a for kv in TINY for a in ("--set", kv)]) == 0
    return out


def test_train_writes_a_model_folder_and_logs(trained):
    assert (trained / "model" / "model.safetensors").is_file() and (trained / "model" / "tokenizer.json").is_file()
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["stopped_by"] == "steps"
    rows = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert Image.open(trained / "samples.png").size == (4 * 18 + 2, 18 + 2)  # 1 prompt x 4 samples, 2 px gaps


def test_generate_writes_a_grid_of_the_right_size(trained, tmp_path, capsys):
    out = tmp_path / "grid.png"
    args = ["generate", "a red circle", "a blue square", "--model", str(trained / "model"), "--image", str(out)]
    assert main(args + ["--samples", "3", "--sampling-steps", "2", "--seed", "1", "--scale", "2"]) == 0
    # rows = 2 prompts, columns = 3 samples of 16 px with 2 px gaps, every pixel doubled
    assert Image.open(out).size == ((3 * 18 + 2) * 2, (2 * 18 + 2) * 2)
    again = tmp_path / "again.png"
    main(args[:-1] + [str(again), "--samples", "3", "--sampling-steps", "2", "--seed", "1", "--scale", "2"])
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(again)))  # seeded
    assert "wrote" in capsys.readouterr().out


def test_generate_refuses_control_without_a_controlnet(trained, tmp_path, capsys):
    Image.new("RGB", (16, 16)).save(tmp_path / "map.png")
    args = ["generate", "a red circle", "--model", str(trained / "model"), "--image", str(tmp_path / "x.png")]
    assert main(args + ["--control", str(tmp_path / "map.png")]) == 2
    assert "no ControlNet branch" in capsys.readouterr().err


def test_controlnet_training_and_controlled_generation(trained, tmp_path):
    out = tmp_path / "control"
    args = ["train-generation", "t2i-shapes-control", "--base", str(trained / "model"), "--out", str(out)]
    sets = ["train.steps=2", "train.batch_size=2", "train.threads=0", "data.image_size=16", "data.tokenizer_captions=5"]
    assert main(args + ["--no-progress"] + [a for kv in sets for a in ("--set", kv)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert 0 < summary["trainable_params"] < summary["total_params"]
    Image.new("RGB", (16, 16), (215, 38, 38)).save(tmp_path / "map.png")
    grid = tmp_path / "c.png"
    gen = ["generate", "a red circle", "--model", str(out / "model"), "--image", str(grid), "--control"]
    assert main(gen + [str(tmp_path / "map.png"), "--samples", "2", "--sampling-steps", "2", "--scale", "1"]) == 0
    assert Image.open(grid).size == (2 * 18 + 2, 18 + 2)


def test_eval_generation_is_registered():
    args = build_parser().parse_args(["eval", "generation", "--model", "m", "--samples", "1"])
    assert args.model == "m" and args.samples == 1 and callable(args.run)


def test_recipe_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"t2i-shapes\.train\.stepz: unknown key"):
        load_generation_recipe("t2i-shapes", ["train.stepz=3"])
    with pytest.raises(ConfigError, match="unknown generation recipe 'nope'"):
        load_generation_recipe("nope")
    with pytest.raises(ConfigError, match="budget_clock"):
        load_generation_recipe("t2i-shapes", ["train.budget_clock=gpu"])


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    """The engine's schedule; the recipe's 100000 steps leave the decay to the time budget's progress."""
    recipe = load_generation_recipe("t2i-shapes", ["schedule.warmup_steps=10", "schedule.min_lr_ratio=0.1"])
    cfg, steps = recipe.schedule, recipe.train.steps
    assert lr_multiplier(0, steps, cfg, 0.0) == pytest.approx(0.1)
    assert lr_multiplier(9, steps, cfg, 0.0) == pytest.approx(1.0)
    assert lr_multiplier(100, steps, cfg, 0.5) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_multiplier(100, steps, cfg, 1.0) == pytest.approx(0.1)


def test_frozen_text_tower_from_a_vlp_model_folder(tmp_path, tokenizer):
    """model.text_from loads a pretrained dual-encoder text tower and its tokenizer; freeze_text keeps it fixed."""
    import torch

    import vlp
    from vlp.generation.model import load_generator

    torch.manual_seed(0)
    clip = vlp.create_model("clip-tiny")
    vlp.save_pretrained(clip, tmp_path / "clip", tokenizer=tokenizer)
    out = tmp_path / "run"
    sets = [kv for kv in TINY if not kv.startswith("model.text.")]
    sets += [f"model.text_from={tmp_path / 'clip'}", "model.freeze_text=true"]
    assert main(["train-generation", "t2i-shapes", "--out", str(out), "--no-progress"] + [
        a for kv in sets for a in ("--set", kv)
    ]) == 0  # fmt: skip
    model = load_generator(out / "model")
    assert model.text.cfg == clip.text.cfg  # the tower's own config replaced the recipe's
    for name, tensor in clip.text.state_dict().items():
        assert torch.equal(model.text.state_dict()[name], tensor), name
    assert model.tokenizer.get_vocab() == tokenizer.get_vocab()


def test_eval_generation_command_writes_results(trained, tmp_path, capsys):
    from vlp.generation.classifier import ClassifierConfig, save_classifier, train_classifier

    save_classifier(train_classifier(ClassifierConfig(image_size=16, width=4, steps=3, batch_size=4)), tmp_path / "c")
    out = tmp_path / "results"
    args = ["eval", "generation", "--model", str(trained / "model"), "--samples", "1", "--sampling-steps", "2"]
    assert main(args + ["--classifier", str(tmp_path / "c"), "--out", str(out), "--grid", str(tmp_path / "g.png")]) == 0
    results = json.loads((out / "results.json").read_text())  # --out is a folder, as in every `vlp eval`
    assert results["settings"]["images"] == 42 and "layout_iou" not in results
    assert Image.open(tmp_path / "g.png").size == ((18 + 2) * 2, (42 * 18 + 2) * 2)  # 42 rows x 1 sample, scale 2
    assert "attribute accuracy" in capsys.readouterr().out


def _tiny_args(out, *extra):
    return ["train-generation", "t2i-shapes", "--out", str(out), "--no-progress", *extra] + [
        a for kv in TINY if kv != "train.steps=3" for a in ("--set", kv)
    ]


def test_train_generation_steps_flag_and_a_readable_summary(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_tiny_args(out, "--steps", "2")) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2  # --steps is train.steps
    assert "train-generation: at most 2 optimizer steps (train.steps) or a 14-minute" in printed  # said up front
    lines = {line.split()[0]: line.split(maxsplit=1)[1] for line in printed.splitlines()[1:] if line.strip()}
    assert lines["steps"] == "2 (stopped by steps)" and lines["model"] == str(out / "model")
    assert lines["summary"] == str(out / "summary.json") and "{" not in printed  # a table, not raw JSON


def test_train_generation_budget_is_explained():
    from vlp.generation.train import budget_text

    cfg = load_generation_recipe("t2i-shapes", ["train.steps=100", "train.time_budget_minutes=14"]).train
    assert budget_text(cfg) == (
        "at most 100 optimizer steps (train.steps) or a 14-minute wall-clock budget (train.time_budget_minutes), "
        "whichever ends first; the learning rate decays to its floor by then"
    )


def test_train_generation_resumes_exactly_from_a_checkpoint(tmp_path):
    """4 steps with a checkpoint every 2; a copy of the run cut back to its step-2 checkpoint and resumed must
    log the same losses and end with the same weights as the uninterrupted run."""
    import shutil

    from safetensors.torch import load_file

    full = tmp_path / "full"
    assert main(_tiny_args(full, "--steps", "4", "--set", "train.checkpoint_every=2")) == 0
    cut = tmp_path / "cut"
    shutil.copytree(full, cut)
    shutil.rmtree(cut / "checkpoints" / "step_00000004")
    assert main(_tiny_args(cut, "--steps", "4", "--set", "train.checkpoint_every=2")) == 2  # refuses: not empty
    assert main(_tiny_args(cut, "--steps", "4", "--set", "train.checkpoint_every=2", "--resume")) == 0
    summary = json.loads((cut / "summary.json").read_text())
    assert summary["start_step"] == 2 and summary["steps"] == 4
    rows = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    again = [json.loads(line) for line in (cut / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in again] == [1, 2, 3, 4]
    assert [r["loss"] for r in again] == [r["loss"] for r in rows]
    a, b = load_file(full / "model" / "model.safetensors"), load_file(cut / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_train_generation_resume_without_a_checkpoint_fails_clearly(tmp_path, capsys):
    assert main(_tiny_args(tmp_path / "empty", "--resume")) == 2
    err = capsys.readouterr().err  # the engine's message, as for every training command
    assert f"{tmp_path / 'empty'}: --resume found no checkpoint to continue from" in err and "drop --resume" in err


def test_train_generation_help_says_what_ends_the_run(capsys):
    with pytest.raises(SystemExit):
        main(["train-generation", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "train.time_budget_minutes" in text and "whichever comes first" in text
    assert "--steps STEPS" in text and "--resume" in text


def test_sampling_steps_have_their_own_flag():
    """--steps means optimizer steps (pretrain, finetune, train-generation); DDIM steps are --sampling-steps."""
    parser = build_parser()
    gen = parser.parse_args(["generate", "a", "--model", "m", "--image", "x.png", "--sampling-steps", "7"])
    ev = parser.parse_args(["eval", "generation", "--model", "m", "--sampling-steps", "7"])
    assert gen.sampling_steps == ev.sampling_steps == 7
    for argv in (["generate", "a", "--model", "m", "--image", "x.png", "--steps", "7"],
                 ["eval", "generation", "--model", "m", "--steps", "7"],
                 ["generate", "a", "--model", "m", "--out", "x.png"]):  # fmt: skip
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
