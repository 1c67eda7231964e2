"""Weight-decay groups, per-module learning rates, freezing, and the lr schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from vlp.config import ConfigError, from_dict
from vlp.recipe.run import OptimConfig, ScheduleConfig, TrainConfig
from vlp.train.optim import build_optimizer, freeze, param_groups
from vlp.train.schedule import LRSchedule, lr_multiplier


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tok = nn.Embedding(10, 4)
        self.proj = nn.Linear(4, 4)
        self.ln = nn.LayerNorm(4)
        self.gn = nn.GroupNorm(2, 4)
        self.rms = nn.RMSNorm(4)
        self.pos_embed = nn.Parameter(torch.randn(1, 3, 4))
        self.logit_scale = nn.Parameter(torch.tensor(2.0))
        self.temperature = nn.Parameter(torch.ones(1, 1))
        self.vision = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))


def _groups_by_name(module: nn.Module, cfg: OptimConfig) -> dict[str, dict]:
    return {g["name"]: g for g in param_groups(module, cfg)}


def test_weight_decay_only_on_matrices():
    groups = _groups_by_name(Net(), OptimConfig(lr=1e-3, weight_decay=0.1))
    assert set(groups) == {"default/decay", "default/no_decay"}
    assert sorted(groups["default/decay"]["param_names"]) == ["proj.weight", "vision.0.weight"]
    assert sorted(groups["default/no_decay"]["param_names"]) == sorted(
        [
            "tok.weight",  # embedding
            "proj.bias",
            "ln.weight",
            "ln.bias",
            "gn.weight",
            "gn.bias",
            "rms.weight",
            "pos_embed",
            "logit_scale",
            "temperature",
            "vision.0.bias",
            "vision.1.weight",
            "vision.1.bias",
        ]
    )
    assert groups["default/decay"]["weight_decay"] == 0.1
    assert groups["default/no_decay"]["weight_decay"] == 0.0


def test_adamw_step_decays_only_the_decay_group():
    # with zero gradients Adam's update is 0, so the only change is AdamW's decoupled decay p *= 1 - lr * wd
    net = Net()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    opt = build_optimizer(net, OptimConfig(lr=0.5, weight_decay=0.2))
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for name, param in net.named_parameters():
        factor = 1 - 0.5 * 0.2 if name in ("proj.weight", "vision.0.weight") else 1.0
        torch.testing.assert_close(param.detach(), before[name] * factor)


def test_module_lr_longest_prefix_wins():
    cfg = OptimConfig(lr=1e-3, weight_decay=0.1, module_lr={"vision": 1e-5, "vision.1": 3e-4})
    groups = _groups_by_name(Net(), cfg)
    assert groups["vision/decay"]["lr"] == 1e-5
    assert groups["vision/decay"]["param_names"] == ["vision.0.weight"]
    assert groups["vision/no_decay"]["param_names"] == ["vision.0.bias"]
    assert groups["vision.1/no_decay"]["lr"] == 3e-4
    assert groups["vision.1/no_decay"]["param_names"] == ["vision.1.weight", "vision.1.bias"]
    assert groups["default/decay"]["lr"] == 1e-3
    # every trainable parameter lands in exactly one group
    names = [n for g in groups.values() for n in g["param_names"]]
    assert sorted(names) == sorted(n for n, _ in Net().named_parameters())


def test_module_lr_typo_is_an_error():
    with pytest.raises(ConfigError, match=r"optim\.module_lr\.visoin: matches no parameter.*vision"):
        param_groups(Net(), OptimConfig(module_lr={"visoin": 1e-5}))


def test_freeze_by_prefix_on_dotted_boundaries():
    net = Net()
    frozen = freeze(net, ["vision", "tok"])
    assert frozen == ["tok.weight", "vision.0.bias", "vision.0.weight", "vision.1.bias", "vision.1.weight"]
    assert all(not p.requires_grad for n, p in net.named_parameters() if n.startswith(("vision.", "tok.")))
    assert net.proj.weight.requires_grad
    opt = build_optimizer(net, OptimConfig())
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert all(id(p) not in in_opt for p in net.vision.parameters())
    with pytest.raises(ConfigError, match=r"optim\.freeze: 'visio' matches no parameter"):
        freeze(Net(), ["visio"])  # a prefix of a name is not a module


def test_freezing_everything_is_an_error():
    net = nn.Linear(2, 2)
    freeze(net, ["weight", "bias"])
    with pytest.raises(ConfigError, match="no trainable parameters"):
        param_groups(net, OptimConfig())


def test_config_values_are_checked_with_their_key():
    with pytest.raises(ConfigError, match=r"recipe\.train: grad_accum must be >= 1"):
        from_dict(TrainConfig, {"grad_accum": 0}, "recipe.train")
    with pytest.raises(ConfigError, match=r"recipe\.schedule: min_lr_ratio must lie in \[0, 1\]"):
        from_dict(ScheduleConfig, {"min_lr_ratio": 2}, "recipe.schedule")
    with pytest.raises(ConfigError, match=r"recipe\.optim\.name: expected one of \['adamw'\]"):
        from_dict(OptimConfig, {"name": "sgd"}, "recipe.optim")


def test_warmup_then_cosine_matches_the_formula():
    cfg = ScheduleConfig(name="cosine", warmup_steps=3, min_lr_ratio=0.1)
    # warmup (step + 1) / 3, then 0.1 + 0.9 * (1 + cos(pi * (step - 3) / 7)) / 2 over 7 steps
    assert [lr_multiplier(s, 10, cfg) for s in range(3)] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert lr_multiplier(3, 10, cfg) == pytest.approx(1.0)
    assert lr_multiplier(5, 10, cfg) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 2 / 7)))
    assert lr_multiplier(10, 10, cfg) == pytest.approx(0.1)
    assert lr_multiplier(50, 10, cfg) == pytest.approx(0.1)  # past the end: stays at the floor
    linear = ScheduleConfig(name="linear", warmup_steps=0, min_lr_ratio=0.0)
    assert [lr_multiplier(s, 4, linear) for s in range(5)] == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    constant = ScheduleConfig(name="constant", warmup_steps=2)
    assert [lr_multiplier(s, 4, constant) for s in range(4)] == pytest.approx([0.5, 1.0, 1.0, 1.0])


def test_schedule_scales_every_group_from_its_own_peak():
    net = Net()
    opt = build_optimizer(net, OptimConfig(lr=1e-3, module_lr={"vision": 1e-5}))
    schedule = LRSchedule(opt, ScheduleConfig(name="cosine", warmup_steps=4), total_steps=8)
    schedule.apply(1)  # warmup: half of the peak
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["vision/decay"] == pytest.approx(0.5e-5)
    assert lrs["default/decay"] == pytest.approx(0.5e-3)
    # a resumed run rebuilds the schedule from the recipe and only needs the step
    opt2 = build_optimizer(Net(), OptimConfig(lr=1e-3, module_lr={"vision": 1e-5}))
    resumed = LRSchedule(opt2, ScheduleConfig(name="cosine", warmup_steps=4), total_steps=8)
    resumed.load_state_dict(schedule.state_dict())
    assert {g["name"]: g["lr"] for g in opt2.param_groups} == lrs
