"""ALBEF's ramp of the distillation weight: alpha * min(1, step / distill_warmup_steps), with the
step counted by Pretraining (a checkpointed buffer) and passed to ITC and MLM."""

import math

import pytest
import torch
import torch.nn.functional as F
from objectives_toy_model import ToyModel, ToyTokenizer, toy_batch

import vlp.objectives.itc as itc_module
from vlp.config import ConfigError
from vlp.core.outputs import ModelOutputs
from vlp.data.batch import Batch
from vlp.io.checkpoints import CheckpointManager
from vlp.objectives import Pretraining, build_objectives, validate_objectives
from vlp.objectives.momentum import STEP_KEY, distill_weight
from vlp.train.distributed import full_model_state, load_model_state


@pytest.mark.parametrize(
    ("step", "expected"), [(0, 0.0), (1, 0.004), (25, 0.1), (99, 0.396), (100, 0.4), (101, 0.4), (5000, 0.4)]
)
def test_ramp_follows_albef_formula(step: int, expected: float) -> None:
    # ALBEF: alpha * min(1, i / len(loader)) in the first epoch, here over 100 steps with alpha = 0.4
    assert distill_weight(0.4, 100, step, "itc") == pytest.approx(expected)
    as_tensor = distill_weight(0.4, 100, torch.tensor(step), "itc")
    assert isinstance(as_tensor, torch.Tensor) and as_tensor.item() == pytest.approx(expected)


def test_no_ramp_and_missing_step() -> None:
    assert distill_weight(0.4, 0, None, "itc") == 0.4  # off: alpha from the first step, no step needed
    with pytest.raises(ConfigError, match=r"objectives.mlm.distill_warmup_steps=10: needs the training step"):
        distill_weight(0.4, 10, None, "mlm")
    with pytest.raises(ConfigError, match=r"objectives.itc: distill_warmup_steps must be >= 0, got -1"):
        validate_objectives({"itc": {"distill_warmup_steps": -1}})
    assert validate_objectives({"mlm": {}})["mlm"]["distill_warmup_steps"] == 0


def pretraining(warmup: int, objectives: tuple[str, ...] = ("itc",), momentum: float = 0.9) -> Pretraining:
    torch.manual_seed(0)
    options = {"itc": {"distill_warmup_steps": warmup}, "mlm": {"prob": 0.5, "distill_warmup_steps": warmup}}
    chosen = {name: options[name] for name in objectives}
    return Pretraining(ToyModel(), build_objectives(chosen, tokenizer=ToyTokenizer()), momentum=momentum)


def test_counter_is_checkpointed_and_restored(tmp_path) -> None:
    pt = pretraining(warmup=10)
    assert pt.step.dtype == torch.long and pt.step.item() == 0
    for _ in range(3):
        pt.after_step()
    assert pt.state_dict()["step"].item() == 3
    _, logs = pt(toy_batch())
    assert logs["itc_alpha"] == pytest.approx(0.4 * 3 / 10)

    # through the training engine's checkpoint path: full state -> safetensors -> a fresh module
    folder = CheckpointManager(tmp_path).save(3, full_model_state(pt), {"step": 3})
    weights, _, _ = CheckpointManager(tmp_path).load(folder)
    fresh = pretraining(warmup=10)
    load_model_state(fresh, weights)
    assert fresh.step.item() == 3
    _, logs = fresh(toy_batch())
    assert logs["itc_alpha"] == pytest.approx(0.12)
    assert pretraining(warmup=0, momentum=0.0).state_dict()["step"].item() == 0  # every run counts its steps


def momentum_softmax(pt: Pretraining, batch) -> torch.Tensor:
    """The momentum model's i2t similarity distribution, from its embeddings at the student's scale."""
    with torch.no_grad():
        m = pt.ema(batch)
        scale = pt.model.logit_scale.clamp(max=math.log(100)).exp()
        return F.softmax(scale * m.image_embed @ m.text_embed.t(), dim=1)


def test_itc_target_ramps_from_the_one_hot_target(monkeypatch) -> None:
    seen = []
    real = itc_module.soft_cross_entropy

    def spy(logits, target, smoothing=0.0):
        seen.append(target.detach().clone())
        return real(logits, target, smoothing)

    monkeypatch.setattr(itc_module, "soft_cross_entropy", spy)
    pt, batch = pretraining(warmup=4), toy_batch()
    n = batch.input_ids.shape[0]
    pt(batch)  # step 0: alpha = 0
    assert torch.equal(seen[0], torch.eye(n))  # exactly the plain one-hot target
    with torch.no_grad():
        for p in pt.model.parameters():  # a teacher that differs from the student
            p.add_(0.3 * torch.randn_like(p))
    pt.after_step()  # step 1: alpha = 0.4 / 4 = 0.1
    seen.clear()
    pt(batch)
    soft = momentum_softmax(pt, batch)
    assert not torch.allclose(soft, torch.eye(n), atol=0.05)
    torch.testing.assert_close(seen[0], 0.1 * soft + 0.9 * torch.eye(n))


def test_mlm_with_ramp_equals_mlm_at_the_ramped_alpha() -> None:
    batch = toy_batch()
    student, teacher = ToyModel(), ToyModel()  # different weights: the distillation term matters
    outputs = student(batch)
    outputs.momentum = teacher(batch)

    def mlm_loss(step: int | None, **options) -> float:
        mlm = build_objectives({"mlm": {"prob": 0.5, "seed": 3, **options}}, tokenizer=ToyTokenizer())["mlm"][1]
        outputs.extra.pop(STEP_KEY, None)
        if step is not None:
            outputs.extra[STEP_KEY] = torch.tensor(step)
        return mlm(outputs, batch)[0].item()

    plain = mlm_loss(None, distill_alpha=0.0)
    assert mlm_loss(0, distill_alpha=0.4, distill_warmup_steps=8) == pytest.approx(plain, rel=1e-6)
    quarter = mlm_loss(None, distill_alpha=0.1)
    assert mlm_loss(2, distill_alpha=0.4, distill_warmup_steps=8) == pytest.approx(quarter, rel=1e-5)
    assert quarter != pytest.approx(plain, rel=1e-3)
    full = mlm_loss(None, distill_alpha=0.4)
    assert mlm_loss(80, distill_alpha=0.4, distill_warmup_steps=8) == pytest.approx(full, rel=1e-5)


def test_pretraining_passes_its_step_to_both_objectives() -> None:
    pt = pretraining(warmup=20, objectives=("itc", "mlm"))
    batch = toy_batch()
    values = []
    for _ in range(3):
        _, logs = pt(batch)
        values.append((logs["itc_alpha"], logs["mlm_alpha"]))
        pt.after_step()
    assert values == [pytest.approx((0.4 * s / 20, 0.4 * s / 20)) for s in range(3)]
    assert math.isfinite(pt(batch)[0].item())


def test_itc_without_pretraining_needs_warmup_off() -> None:
    image, text = F.normalize(torch.randn(3, 4), dim=-1), F.normalize(torch.randn(3, 4), dim=-1)
    outputs = ModelOutputs(model=None, image_embed=image, text_embed=text, logit_scale=torch.tensor(1.0))
    outputs.momentum = ModelOutputs(model=None, image_embed=image, text_embed=text)
    itc = build_objectives({"itc": {"distill_warmup_steps": 5}})["itc"][1]
    with pytest.raises(ConfigError, match="distill_warmup_steps=5: needs the training step"):
        itc(outputs, Batch())
