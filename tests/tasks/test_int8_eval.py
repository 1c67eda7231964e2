"""``--int8`` on ``vlp eval zeroshot`` / ``vlp eval retrieval``: the model runs with int8 linear layers, the
results record it, and the scores stay those of fp32 within the int8 option's stated tolerance."""

from __future__ import annotations

import json

import pytest
from grounding_helpers import make_world, train_tokenizer
from shapes_task_helpers import pretrained

from vlp.cli import main


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("int8")
    world = make_world(root)
    tok = train_tokenizer(world, root / "tok")
    return world, pretrained("zeroshot-clip-tiny", root / "pre", tok)


def results(out) -> dict:
    return json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("task", ["zeroshot", "retrieval"])
def test_int8_eval_runs_records_itself_and_stays_close(world, tmp_path, task):
    world, init = world
    args = (
        ["--by", "color", "--templates", "shapes"]
        if task == "zeroshot"
        else ["--dual", "--format", "albef", "--set", "paths.annotations=annotations/captions_val.json"]
    )
    runs = {}
    for int8 in (False, True):
        out = tmp_path / f"int8-{int8}"
        flag = ["--int8"] if int8 else []
        rc = main(["eval", task, "--model", str(init), "--data", str(world), "--split", "val", "--device", "cpu",
                   "--out", str(out), *args, *flag])  # fmt: skip
        assert rc == 0
        runs[int8] = results(out)
        assert runs[int8]["settings"]["int8"] is int8
        linears = runs[int8]["settings"]["int8_linears"]  # counted in the model that was evaluated
        assert linears > 0 if int8 else linears == 0
    key = "top1" if task == "zeroshot" else "i2t_r1"
    # a handful of val images: one image changing its answer moves the score by 100 / n; allow one or two
    n = runs[False]["metrics"]["n_images"]
    assert abs(runs[True]["metrics"][key] - runs[False]["metrics"][key]) <= 200 / n + 1e-9


def test_int8_on_another_device_is_refused_by_name(world, tmp_path, capsys):
    world, init = world
    rc = main(["eval", "zeroshot", "--model", str(init), "--data", str(world), "--split", "val", "--device", "meta",
               "--int8", "--out", str(tmp_path / "o")])  # fmt: skip
    assert rc != 0
    assert "--int8" in capsys.readouterr().err
