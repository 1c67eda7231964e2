"""Text-to-image on the training engine: a run stopped by a signal resumes to the weights of an uninterrupted
run (rendered scenes, and a caption folder across an epoch boundary), and any caption folder the data layer
reads (Karpathy, manifest) trains, its images mapped back to [-1, 1] whatever the transform's statistics."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from test_generation_cli import TINY

from vlp.cli import main
from vlp.generation.model import TextToImageModel, load_generator
from vlp.generation.train import build_loader, build_model, load_generation_recipe
from vlp.text import Tokenizer
from vlp.train.logging import read_metrics

COLOURS = {"red": (215, 38, 38), "blue": (40, 90, 220), "green": (40, 160, 60), "yellow": (230, 200, 30),
           "purple": (140, 60, 180), "white": (250, 250, 250)}  # fmt: skip
RENDERED = [kv for kv in TINY if not kv.startswith("train.steps=")]
FOLDER = [kv for kv in RENDERED if not kv.startswith("data.tokenizer_captions")]  # a renderer-only key


def _write_images(root, names):
    (root / "images").mkdir(parents=True)
    for name in names:
        Image.new("RGB", (16, 16), COLOURS[name]).save(root / "images" / f"{name}.png")


def karpathy_folder(root):
    """Six one-colour 16x16 images, one caption each, in a Karpathy ``dataset_*.json``."""
    _write_images(root, COLOURS)
    images = [{"filepath": "images", "filename": f"{name}.png", "split": "train", "imgid": i,
               "sentences": [{"raw": f"a {name} picture", "tokens": ["a", name, "picture"], "sentid": i}]}
              for i, name in enumerate(COLOURS)]  # fmt: skip
    (root / "annotations").mkdir()
    (root / "annotations" / "dataset_colours.json").write_text(json.dumps({"images": images}))
    return root


def manifest_folder(root):
    _write_images(root, COLOURS)
    lines = [json.dumps({"image": f"images/{name}.png", "caption": f"a {name} picture"}) for name in COLOURS]
    (root / "manifest_train.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def caption_tokenizer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    Tokenizer.train([f"a {name} picture" for name in COLOURS] * 3, vocab_size=40).save(folder)
    return folder


def _sets(pairs):
    return [a for kv in pairs for a in ("--set", kv)]


def _run(out, steps, sets, *extra):
    return main(["train-generation", "t2i-shapes", "--out", str(out), "--no-progress", "--steps", str(steps),
                 *extra, *_sets(sets)])  # fmt: skip


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("data", ["rendered", "karpathy"])
def test_a_run_stopped_by_a_signal_resumes_to_the_uninterrupted_weights(
    data, sig, tmp_path, monkeypatch, caption_tokenizer
):
    """6 steps; the other run gets the signal during step 2, saves step 2 and stops (exit 130 / 143), and
    ``--resume`` trains steps 3-6 (through an epoch end of the 3-batch caption folder): same losses, same
    EMA weights in the model folder, same optimizer moments."""
    extra, sets = [], [*RENDERED, "train.checkpoint_every=3"]
    if data == "karpathy":
        extra = ["--data", str(karpathy_folder(tmp_path / "folder")), "--tokenizer", str(caption_tokenizer)]
        sets = [*FOLDER, "train.checkpoint_every=3"]
    assert _run(tmp_path / "full", 6, sets, *extra) == 0

    forward, calls = TextToImageModel.forward, []

    def signalled(self, batch):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), sig)  # as if the user pressed Ctrl-C / the scheduler preempted during step 2
        return forward(self, batch)

    monkeypatch.setattr(TextToImageModel, "forward", signalled)
    stopped = tmp_path / "stopped"
    assert _run(stopped, 6, sets, *extra) == (130 if sig == signal.SIGINT else 143)
    summary = json.loads((stopped / "summary.json").read_text())
    assert (summary["steps"], summary["stopped_by"]) == (2, signal.Signals(sig).name)
    assert (stopped / "checkpoints" / "step_00000002").is_dir()

    assert _run(stopped, 6, sets, *extra, "--resume") == 0
    summary = json.loads((stopped / "summary.json").read_text())
    assert (summary["start_step"], summary["steps"], summary["stopped_by"]) == (2, 6, "steps")
    full_log, resumed_log = read_metrics(tmp_path / "full" / "metrics.jsonl"), read_metrics(stopped / "metrics.jsonl")
    assert [r["step"] for r in resumed_log] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in resumed_log] == [r["loss"] for r in full_log]
    for name in ("model/model.safetensors", "checkpoints/step_00000006/ema.safetensors"):
        a, b = load_file(tmp_path / "full" / name), load_file(stopped / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    a = torch.load(tmp_path / "full" / "checkpoints" / "step_00000006" / "state.pt", weights_only=True)
    b = torch.load(stopped / "checkpoints" / "step_00000006" / "state.pt", weights_only=True)
    for key, moments in a["optimizer"]["state"].items():
        assert torch.equal(moments["exp_avg"], b["optimizer"]["state"][key]["exp_avg"]), key


@pytest.mark.parametrize("make", [karpathy_folder, manifest_folder])
def test_train_generation_from_a_caption_folder(make, tmp_path, capsys, caption_tokenizer):
    folder = make(tmp_path / "folder")
    out = tmp_path / "run"
    extra = ["--data", str(folder), "--tokenizer", str(caption_tokenizer)]
    assert _run(out, 3, FOLDER, *extra) == 0
    assert f"read as {make.__name__.split('_')[0]}" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["stopped_by"] == "steps"
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3]
    model = load_generator(out / "model")
    assert model.tokenizer.get_vocab() == Tokenizer.load(caption_tokenizer).get_vocab()
    assert tuple(model.generate(["a red picture"], steps=2).shape) == (1, 3, 16, 16)


@pytest.mark.parametrize("stats", [None, "data.transform.mean=[0.5,0.5,0.5]"])
def test_caption_batches_hold_the_pictures_in_minus_one_to_one(stats, tmp_path, caption_tokenizer):
    """The data layer normalises by the transform's mean / std; the batches the model gets are 8-bit / 127.5 - 1
    again (one-colour pictures: any resampling keeps the colour), each with its own caption."""
    folder = karpathy_folder(tmp_path / "folder")
    overrides = [*FOLDER, f"tokenizer={caption_tokenizer}", *([stats] if stats else [])]
    recipe = load_generation_recipe("t2i-shapes", overrides, data_folder=str(folder))
    assert recipe.data.type == "karpathy" and recipe.data.transform.train_crop == "center"
    model = build_model(recipe)
    batch = next(iter(build_loader(recipe, model)))
    assert batch.images.shape == (2, 3, 16, 16) and batch.control is None
    for image, caption in zip(batch.images, batch.captions):
        colour = np.array(COLOURS[caption.split()[1]], dtype=np.float32) / 127.5 - 1
        torch.testing.assert_close(image, torch.from_numpy(colour)[:, None, None].expand(3, 16, 16), atol=1e-5,
                                   rtol=0)  # fmt: skip
    assert batch.input_ids.shape[0] == 2 and batch.attention_mask.dtype == torch.bool


def test_caption_data_errors_name_what_is_missing(tmp_path):
    folder = str(karpathy_folder(tmp_path / "folder"))
    recipe = load_generation_recipe("t2i-shapes", FOLDER, data_folder=folder)
    with pytest.raises(ValueError, match=r"tokenizer: empty, and data.type='karpathy' brings no tokenizer"):
        build_model(recipe)
    with pytest.raises(ValueError, match=r"t2i-shapes.data.min_objects: unknown key"):
        load_generation_recipe("t2i-shapes", [*FOLDER, "data.min_objects=2"], data_folder=folder)


@pytest.mark.slow
def test_torchrun_trains_text_to_image_with_ddp_on_two_processes(tmp_path):
    """2 gloo ranks: each draws its own scenes; DDP needs every parameter to get a gradient on every rank, also
    the null prompt's in a step where a rank drops no caption (batch 2, cond_drop 0.3: about half the steps)."""
    import subprocess
    import sys

    out = tmp_path / "run"
    sets = [*RENDERED, "train.batch_size=2", "model.cond_drop=0.3", "train.checkpoint_every=2", "train.device=cpu"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
               "vlp.cli", "train-generation", "t2i-shapes", "--out", str(out), "--no-progress", "--steps", "6",
               *_sets(sets)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["ranks"], summary["steps"], summary["stopped_by"]) == (2, 6, "steps")
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000004", "step_00000006"]
    assert proc.stdout.count("(stopped by steps)") == 1  # rank 0 alone prints the summary
    assert load_generator(out / "model").tokenizer is not None
