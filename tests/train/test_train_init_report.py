"""``--init`` says what it transferred: tensors loaded and fresh per top-level part of the model."""

from __future__ import annotations

import torch
from safetensors.torch import save_file

import vlp
from vlp.train.jobs import init_report, load_init_weights


def _rows(report: str) -> dict[str, tuple[int, int]]:
    rows = {}
    for line in report.splitlines()[2:]:
        cells = line.split()
        if len(cells) == 3 and cells[1].isdigit():
            rows[cells[0]] = (int(cells[1]), int(cells[2]))
    return rows


def test_albef_weights_into_vilt_report_the_fresh_fusion_encoder(tmp_path):
    torch.manual_seed(0)
    donor = vlp.create_model("albef-tiny").state_dict()
    path = tmp_path / "albef.safetensors"
    save_file({f"model.{k}": v.contiguous().clone() for k, v in donor.items()}, path)  # a pretraining run's layout
    model = vlp.create_model("vilt-tiny")
    missing, unexpected = load_init_weights(model, path)
    report = init_report(model, path, missing, unexpected)
    # independently: a ViLT tensor is loaded iff ALBEF has a tensor of that name (shapes fit, or loading fails)
    expected: dict[str, list[int]] = {}
    for key in model.state_dict():
        head = key.split(".")
        part = ".".join(head[:2]) if head[0] == "heads" else head[0]
        expected.setdefault(part, [0, 0])[key not in donor] += 1
    rows = _rows(report)
    assert rows.pop("total") == (sum(v[0] for v in expected.values()), sum(v[1] for v in expected.values()))
    assert rows == {part: tuple(v) for part, v in expected.items()}
    assert rows["fusion"][0] == 0 and rows["fusion"][1] > 0  # ViLT's single-stream encoder is not in ALBEF
    assert "starting wholly fresh: fusion" in report
    unused = sum(1 for k in donor if k not in model.state_dict())
    assert f"not used: {unused} tensor(s)" in report


def test_matching_architecture_loads_everything(tmp_path):
    torch.manual_seed(0)
    donor = vlp.create_model("albef-tiny").state_dict()
    path = tmp_path / "albef.safetensors"
    save_file({k: v.contiguous().clone() for k, v in donor.items()}, path)
    model = vlp.create_model("albef-tiny")
    missing, unexpected = load_init_weights(model, path)
    report = init_report(model, path, missing, unexpected)
    assert _rows(report)["total"] == (len(model.state_dict()), 0)
    assert "fresh:" not in report and "not used" not in report
    for key, value in model.state_dict().items():
        assert torch.equal(value, donor[key]), key
