"""Noise schedules, forward process, DDPM loss, DDIM and guidance checked against their formulas."""

from __future__ import annotations

import math

import pytest
import torch

from vlp.generation.diffusion import (
    DiffusionConfig,
    NoiseSchedule,
    ddim_sample,
    ddim_timesteps,
    ddpm_loss,
    guided,
)


def test_linear_schedule_alpha_bar_is_the_running_product():
    sched = NoiseSchedule(DiffusionConfig(timesteps=10, schedule="linear", beta_start=0.01, beta_end=0.1))
    prod = 1.0
    for t in range(10):
        beta = 0.01 + (0.1 - 0.01) * t / 9
        prod *= 1 - beta
        assert sched.betas[t].item() == pytest.approx(beta, rel=1e-6)
        assert sched.alphas_cumprod[t].item() == pytest.approx(prod, rel=1e-6)


def test_cosine_schedule_matches_nichol_dhariwal():
    T, s = 1000, 0.008

    def f(t: float) -> float:
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    sched = NoiseSchedule(DiffusionConfig(timesteps=T, schedule="cosine"))
    for t in (0, 1, 250, 500, 900, 990):
        assert sched.alphas_cumprod[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-5, abs=1e-7)
    # the last beta is clipped at 0.999 instead of reaching 1
    assert sched.betas[-1].item() == pytest.approx(0.999)
    assert bool((sched.alphas_cumprod[1:] < sched.alphas_cumprod[:-1]).all())


def test_q_sample_closed_form_and_inverse():
    sched = NoiseSchedule(DiffusionConfig(timesteps=50, schedule="linear"))
    x0 = torch.tensor([[1.0, -0.5]]).repeat(3, 1)
    noise = torch.tensor([[0.5, 2.0]]).repeat(3, 1)
    t = torch.tensor([0, 10, 49])
    out = sched.q_sample(x0, t, noise)
    for row, step in enumerate(t.tolist()):
        a = 1.0
        for k in range(step + 1):
            a *= 1 - (1e-4 + (0.02 - 1e-4) * k / 49)
        expected = [math.sqrt(a) * v + math.sqrt(1 - a) * n for v, n in ((1.0, 0.5), (-0.5, 2.0))]
        assert out[row].tolist() == pytest.approx(expected, rel=1e-5)
    assert torch.allclose(sched.predict_x0(out, t, noise), x0, atol=1e-5)


def test_timesteps_out_of_range_are_rejected():
    sched = NoiseSchedule(DiffusionConfig(timesteps=10))
    with pytest.raises(ValueError, match="timesteps must lie in"):
        sched.q_sample(torch.zeros(1, 2), torch.tensor([10]), torch.zeros(1, 2))


def test_ddpm_loss_is_mse_to_the_true_noise():
    sched = NoiseSchedule(DiffusionConfig(timesteps=20))
    x0, noise, t = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 5, 10, 19])
    seen = {}

    def eps_fn(x, tt):
        seen["x"], seen["t"] = x, tt
        return torch.ones_like(x)

    loss = ddpm_loss(eps_fn, sched, x0, t, noise)
    assert torch.equal(seen["t"], t)
    assert torch.allclose(seen["x"], sched.q_sample(x0, t, noise))
    assert loss.item() == pytest.approx(((1 - noise) ** 2).mean().item(), rel=1e-6)


def test_min_snr_weights_match_the_formula():
    cfg = DiffusionConfig(timesteps=100, schedule="linear", loss_weighting="min_snr", snr_gamma=5.0)
    sched = NoiseSchedule(cfg)
    t = torch.tensor([0, 20, 60, 99])
    weights = sched.loss_weights(t)
    for w, step in zip(weights.tolist(), t.tolist()):
        a = 1.0
        for k in range(step + 1):
            a *= 1 - (1e-4 + (0.02 - 1e-4) * k / 99)
        snr = a / (1 - a)
        assert w == pytest.approx(min(snr, 5.0) / snr, rel=1e-4)
    assert weights[0] < 0.01 and weights[-1] == pytest.approx(1.0)  # nearly clean steps count least
    x0, noise = torch.randn(4, 3), torch.randn(4, 3)
    loss = ddpm_loss(lambda x, tt: torch.zeros_like(x), sched, x0, t, noise)
    assert loss.item() == pytest.approx((weights[:, None] * noise**2).mean().item(), rel=1e-6)


def test_v_target_and_its_min_snr_weight():
    sched = NoiseSchedule(DiffusionConfig(timesteps=10, schedule="linear", prediction="v", loss_weighting="min_snr"))
    x0, noise, t = torch.tensor([[0.5]]), torch.tensor([[-2.0]]), torch.tensor([4])
    a = sched.alphas_cumprod[4].item()
    assert sched.target(x0, noise, t).item() == pytest.approx(math.sqrt(a) * -2.0 - math.sqrt(1 - a) * 0.5, rel=1e-5)
    snr = a / (1 - a)
    assert sched.loss_weights(t).item() == pytest.approx(min(snr, 5.0) / (snr + 1), rel=1e-4)


def test_logit_normal_timesteps_follow_the_sigmoid_of_a_normal():
    schedule = NoiseSchedule(DiffusionConfig(timesteps=1000, timestep_sampling="logit_normal", logit_std=1.0))
    t = schedule.sample_timesteps(200_000, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert t.min() >= 0 and t.max() <= 999
    # P(t < T * sigmoid(z)) = Phi(z): the quartiles of N(0, 1) are +-0.6745
    for z, p in ((-0.6745, 0.25), (0.0, 0.5), (0.6745, 0.75), (1.6449, 0.95)):
        cut = 1000 / (1 + math.exp(-z))
        assert float((t < cut).float().mean()) == pytest.approx(p, abs=0.005)
    uniform = NoiseSchedule(DiffusionConfig(timesteps=1000)).sample_timesteps(200_000, torch.device("cpu"))
    assert float((uniform < 250).float().mean()) == pytest.approx(0.25, abs=0.005)
    with pytest.raises(ValueError, match="timestep_sampling='beta'"):
        DiffusionConfig(timestep_sampling="beta")


def test_ddim_timesteps_span_both_ends():
    assert ddim_timesteps(1000, 5) == [999, 749, 500, 250, 0]
    assert ddim_timesteps(10, 10) == list(range(9, -1, -1))
    assert ddim_timesteps(10, 1) == [9]
    with pytest.raises(ValueError, match="steps=11"):
        ddim_timesteps(10, 11)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_ddim_with_an_oracle_recovers_x0(schedule, eta, prediction):
    sched = NoiseSchedule(DiffusionConfig(timesteps=200, schedule=schedule, prediction=prediction))
    x0 = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(1)) * 1.8 - 0.9
    ab = sched.alphas_cumprod.double()

    def oracle(x, t):  # the exact noise (or velocity) that separates x from the known x0
        a = ab[t].view(-1, 1, 1, 1)
        eps = (x.double() - a.sqrt() * x0) / (1 - a).sqrt()
        return (eps if prediction == "eps" else a.sqrt() * eps - (1 - a).sqrt() * x0).float()

    gen = torch.Generator().manual_seed(0)
    out = ddim_sample(oracle, sched, x0.shape, steps=10, eta=eta, generator=gen)
    assert torch.allclose(out, x0, atol=1e-4)


def test_ddim_eta0_is_deterministic_and_eta1_is_not():
    sched = NoiseSchedule(DiffusionConfig(timesteps=100))

    def eps_fn(x, t):
        return 0.3 * x + 0.001 * t.view(-1, 1, 1, 1)

    x_T = torch.randn(2, 3, 4, 4)
    a = ddim_sample(eps_fn, sched, x_T.shape, steps=8, x_T=x_T, generator=torch.Generator().manual_seed(0))
    b = ddim_sample(eps_fn, sched, x_T.shape, steps=8, x_T=x_T, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)  # eta = 0 draws no noise: the generator does not matter
    c = ddim_sample(eps_fn, sched, x_T.shape, steps=8, eta=1.0, x_T=x_T, generator=torch.Generator().manual_seed(0))
    d = ddim_sample(eps_fn, sched, x_T.shape, steps=8, eta=1.0, x_T=x_T, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(c, d)
    # seeded noise: the same seed gives the same start and the same samples
    e = ddim_sample(eps_fn, sched, (2, 3, 4, 4), steps=4, generator=torch.Generator().manual_seed(5))
    f = ddim_sample(eps_fn, sched, (2, 3, 4, 4), steps=4, generator=torch.Generator().manual_seed(5))
    assert torch.equal(e, f)


def test_guidance_formula():
    cond, uncond = torch.tensor([1.0, 2.0]), torch.tensor([0.5, -1.0])
    assert guided(cond, uncond, 3.0).tolist() == [0.5 + 3 * 0.5, -1.0 + 3 * 3.0]
    assert torch.equal(guided(cond, uncond, 1.0), cond)
    assert torch.equal(guided(cond, uncond, 0.0), uncond)


def test_model_sample_applies_guidance_to_separate_cond_and_null_passes(tiny_model, tokenizer):
    """model.sample batches cond + null rows; the reference runs them separately and mixes by the formula."""
    torch.manual_seed(3)
    for p in tiny_model.parameters():  # zero-initialised branches would hide the text entirely
        torch.nn.init.normal_(p, std=0.05)
    tiny_model.eval()
    tokens = tokenizer(["a red circle", "a blue square on the left"], max_length=16)
    ids, mask = tokens.input_ids, tokens.attention_mask
    out = tiny_model.sample(ids, mask, steps=4, guidance=2.5, generator=torch.Generator().manual_seed(0))
    ctx, cmask = tiny_model.condition(ids, mask)
    null, nmask = tiny_model.condition(ids, mask, torch.ones(2, dtype=torch.bool))

    def eps_fn(x, t):
        return guided(tiny_model.predict(x, t, ctx, cmask), tiny_model.predict(x, t, null, nmask), 2.5)

    ref = ddim_sample(eps_fn, tiny_model.schedule, (2, 3, 16, 16), steps=4, generator=torch.Generator().manual_seed(0))
    assert (out - ref).abs().max() < 1e-4, (out - ref).abs().max()
    plain = tiny_model.sample(ids, mask, steps=4, guidance=1.0, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(out, plain, atol=1e-3)
