"""The EMA model, the composite Pretraining module and the recipe-facing validation."""

import pytest
import torch
from objectives_toy_model import ToyModel, ToyTokenizer, toy_batch

from vlp.config import ConfigError
from vlp.objectives import (
    ITC,
    ITM,
    LM,
    MLM,
    ITCConfig,
    ITMConfig,
    LMConfig,
    MLMConfig,
    MomentumModel,
    Pretraining,
    build_objectives,
    validate_objectives,
)

RECIPE = {
    "itc": {"weight": 1.0},
    "itm": {"weight": 0.5, "negatives": "hard", "seed": 1},
    "mlm": {"weight": 2.0, "strategy": "whole_word", "prob": 0.3, "seed": 2},
    "lm": {"weight": 0.25},
    "mrc": {"weight": 1.0, "variant": "kl", "seed": 3},
    "mrfr": {"weight": 1.0, "seed": 3},
}


def test_ema_update_formula(toy_model) -> None:
    ema = MomentumModel(toy_model, 0.9)
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for p in toy_model.parameters():
            p.add_(torch.randn_like(p))
        toy_model.norm.running_mean.add_(3.0)
    ema.update(toy_model)
    current = toy_model.state_dict()
    for name, p in toy_model.named_parameters():
        torch.testing.assert_close(ema.module.state_dict()[name], 0.9 * before[name] + 0.1 * p.detach())
    assert torch.equal(ema.module.norm.running_mean, current["norm.running_mean"])  # buffers are copied
    assert not any(p.requires_grad for p in ema.parameters())
    ema.train()
    assert not ema.module.training  # targets without dropout
    with pytest.raises(ValueError, match="momentum decay"):
        MomentumModel(toy_model, 1.0)


def test_pretraining_sums_weighted_objectives() -> None:
    torch.manual_seed(0)
    model = ToyModel()
    batch = toy_batch(seed=3)
    pretraining = Pretraining(model, build_objectives(RECIPE, tokenizer=ToyTokenizer()), momentum=0.0)
    loss, logs = pretraining(batch)
    assert set(logs) >= {"loss", "loss_itc", "loss_itm", "loss_mlm", "loss_lm", "loss_mrc", "loss_mrfr", "itm_acc"}
    assert all(isinstance(v, float) for v in logs.values())

    # each objective on its own, freshly built with the same seeds
    outputs = model(batch)
    expected = 0.0
    for name, (weight, objective) in build_objectives(RECIPE, tokenizer=ToyTokenizer()).items():
        value, _ = objective(outputs, batch)
        assert logs[f"loss_{name}"] == pytest.approx(value.item(), rel=1e-5), name
        expected += weight * value.item()
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert logs["loss"] == pytest.approx(loss.item())
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_pretraining_with_momentum_distillation() -> None:
    torch.manual_seed(0)
    model = ToyModel()
    model.cfg = type("Cfg", (), {"momentum": 0.5})()  # read like ModelConfig.momentum
    batch = toy_batch()
    pretraining = Pretraining(model, {"itc": {}, "mlm": {"prob": 0.5}}, tokenizer=ToyTokenizer())
    assert pretraining.ema is not None and pretraining.ema.decay == 0.5
    assert any(k.startswith("ema.module.") for k in pretraining.state_dict())  # saved with checkpoints
    loss, logs = pretraining(batch)
    assert torch.isfinite(loss) and {"loss_itc", "loss_mlm"} <= set(logs)
    loss.backward()
    assert pretraining.ema.module.logit_scale.grad is None  # the EMA takes no gradient
    old = pretraining.ema.module.logit_scale.clone()
    with torch.no_grad():
        model.logit_scale.add_(1.0)
    pretraining.after_step()
    assert pretraining.ema.module.logit_scale.item() == pytest.approx(old.item() + 0.5)


def test_pretraining_momentum_itc_value() -> None:
    torch.manual_seed(0)
    model = ToyModel()
    batch = toy_batch()
    pretraining = Pretraining(model, {"itc": {"distill_alpha": 0.4}}, momentum=0.9)
    loss, _ = pretraining(batch)
    outputs = model(batch)
    outputs.momentum = pretraining.ema.module(batch)
    expected, _ = ITC(ITCConfig(distill_alpha=0.4))(outputs, batch)
    no_distill, _ = ITC(ITCConfig(distill_alpha=0.0))(outputs, batch)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss.item() != pytest.approx(no_distill.item(), rel=1e-4)


def test_validate_objectives_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"objectives.itx: unknown objective 'itx'; allowed: itc, itm, lm, mlm"):
        validate_objectives({"itx": {}})
    with pytest.raises(
        ConfigError,
        match=r"objectives.itm.negative: unknown key; allowed keys: negatives, seed, swap_fraction, swap_itc_weight, "
        r"swap_loss, swap_weight, swap_words, weight",
    ):
        validate_objectives({"itm": {"negative": "hard"}})
    with pytest.raises(ConfigError, match=r"objectives.itm.negatives: expected one of \['hard', 'random'\]"):
        validate_objectives({"itm": {"negatives": "easy"}})
    with pytest.raises(ConfigError, match=r"objectives.mlm.strategy"):
        validate_objectives({"mlm": {"strategy": "words"}})
    with pytest.raises(ConfigError, match=r"objectives.mlm: prob must be in \(0, 1\)"):
        validate_objectives({"mlm": {"prob": 1.5}})
    with pytest.raises(ConfigError, match=r"objectives.itc.weight: expected a number"):
        validate_objectives({"itc": {"weight": "high"}})


def test_validated_objectives_round_trip_and_build() -> None:
    validated = validate_objectives({"itm": {"negatives": "random"}, "lm": {"label_smoothing": 0.1}})
    assert validated["itm"] == {
        "weight": 1.0,
        "negatives": "random",
        "seed": None,
        "swap_words": [],
        "swap_fraction": 1.0,
        "swap_weight": 1.0,
        "swap_loss": "binary",
        "swap_itc_weight": 0.0,
    }
    assert validate_objectives(validated) == validated  # plain data: a saved recipe reloads the same
    built = build_objectives(validated)
    assert isinstance(built["itm"][1], ITM) and isinstance(built["lm"][1], LM)
    assert built["lm"][1].cfg.label_smoothing == 0.1
    assert built["itm"][0] == 1.0
    assert isinstance(build_objectives({"itm": ITMConfig(weight=0.3)})["itm"][1], ITM)
    assert isinstance(build_objectives({"lm": LMConfig()})["lm"][1], LM)
    assert isinstance(build_objectives({"mlm": {}}, tokenizer=ToyTokenizer())["mlm"][1], MLM)


def test_recipe_parsing_validates_objectives() -> None:
    from vlp.recipe import parse_recipe

    recipe = parse_recipe({"model": {}, "objectives": {"itc": {"weight": 2.0}, "mlm": {"strategy": "span"}}})
    assert recipe.objectives["itc"]["weight"] == 2.0 and recipe.objectives["mlm"]["prob"] == 0.15
    with pytest.raises(ConfigError, match="objectives.mlm.stratgy"):
        parse_recipe({"model": {}, "objectives": {"mlm": {"stratgy": "span"}}})


def test_recipe_objectives_are_typed_configs_chosen_by_their_key() -> None:
    from vlp.models.config import ModelConfig
    from vlp.recipe import Recipe, parse_recipe

    recipe = parse_recipe({"model": {}, "objectives": {"itc": {"weight": 1.0}, "mlm": None}})
    assert isinstance(recipe.objectives["itc"], ITCConfig) and isinstance(recipe.objectives["mlm"], MLMConfig)
    assert recipe.objectives["mlm"].prob == 0.15 and recipe.objectives["mlm"].weight == 1.0
    assert isinstance(validate_objectives({"lm": {}})["lm"], LMConfig)
    # built in Python with the plain form: the same typed configs
    built = Recipe(model=ModelConfig(), objectives={"itm": {"negatives": "random"}})
    assert isinstance(built.objectives["itm"], ITMConfig) and built.objectives["itm"].negatives == "random"
    with pytest.raises(ConfigError) as err:
        parse_recipe({"model": {}, "objectives": {"itc": {"wieght": 1.0}}})
    assert str(err.value).startswith("recipe.objectives.itc.wieght: unknown key; allowed keys: distill_alpha, ")
    with pytest.raises(ConfigError) as err:
        parse_recipe({"model": {}, "objectives": {"itx": {}}})
    assert str(err.value).startswith("recipe.objectives.itx: unknown objective 'itx'; allowed: itc, itm, lm, mlm")
