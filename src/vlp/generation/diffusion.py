"""Denoising diffusion: noise schedules, the DDPM training loss, the DDIM sampler and classifier-free guidance.

Notation (Ho et al. 2020; Song et al. 2021): ``beta_t`` is the noise added at step
``t`` (0-based, ``t = 0 .. T-1``), ``alpha_bar_t = prod_{s <= t} (1 - beta_s)``, and the
forward process has the closed form ``x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps`` (``a = alpha_bar``).

The network predicts either the noise ``eps`` (DDPM) or the velocity
``v = sqrt(a_t) eps - sqrt(1 - a_t) x_0`` (Salimans & Ho 2022). Both determine
``x_0`` and ``eps`` given ``x_t``; they differ in conditioning: from ``eps``,
``x_0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)`` multiplies the network's error by
``1 / sqrt(a_t)`` (about 20000 at the last cosine step), while from ``v``,
``x_0 = sqrt(a_t) x_t - sqrt(1 - a_t) v`` never amplifies it, so the image's overall
colour, decided at the noisiest steps, comes out right. The loss is the MSE to the
target (DDPM's "simple" loss), optionally weighted by Min-SNR-gamma (Hang et al.
2023) with ``SNR_t = a_t / (1 - a_t)``: ``min(SNR_t, gamma) / SNR_t`` for eps,
``min(SNR_t, gamma) / (SNR_t + 1)`` for v (the same weight on the implied x_0 error),
which lowers the weight of the nearly noise-free steps (fine texture) so a short
run spends its updates on layout, shape and colour.

DDIM (Song et al., eq. 12) steps from ``t`` to an earlier ``s`` with

    sigma  = eta * sqrt((1 - a_s) / (1 - a_t)) * sqrt(1 - a_t / a_s)
    x_s    = sqrt(a_s) x0_hat + sqrt(1 - a_s - sigma^2) eps_hat + sigma z

with ``a_s = 1`` after the last step; ``eta = 0`` is the deterministic sampler,
``eta = 1`` matches DDPM's ancestral sampler. Classifier-free guidance (Ho &
Salimans 2022) mixes a conditional and an unconditional prediction:
``out = out_uncond + s (out_cond - out_uncond)``; since ``x_0`` and ``eps`` are affine
in the network output for a fixed ``x_t``, guiding ``v`` is guiding ``eps``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

# (x_t (B, ...), t (B,) long) -> the network's prediction (eps or v, per the schedule) (B, ...)
ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class DiffusionConfig:
    """The noise schedule (``timesteps`` steps, ``linear`` as DDPM or ``cosine`` as Nichol & Dhariwal), what the
    network predicts and how the loss weighs the timesteps."""

    timesteps: int = 1000
    schedule: Literal["linear", "cosine"] = "cosine"
    beta_start: float = 1e-4  # linear schedule only
    beta_end: float = 0.02  # linear schedule only
    prediction: Literal["eps", "v"] = "eps"
    loss_weighting: Literal["none", "min_snr"] = "none"
    snr_gamma: float = 5.0  # min_snr only
    # training timesteps: uniform, or t = T * sigmoid(n), n ~ N(logit_mean, logit_std) (SD3's logit-normal), which
    # spends the steps on the middle noise levels where an object's outline is decided rather than on near-pure
    # noise or near-clean images
    timestep_sampling: Literal["uniform", "logit_normal"] = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0

    def __post_init__(self) -> None:
        if self.timesteps < 2:
            raise ValueError(f"timesteps={self.timesteps}: must be >= 2")
        if self.schedule not in ("linear", "cosine"):
            raise ValueError(f"schedule={self.schedule!r}: expected 'linear' or 'cosine'")
        if not 0 < self.beta_start <= self.beta_end < 1:
            raise ValueError(f"beta_start={self.beta_start}, beta_end={self.beta_end}: expected 0 < start <= end < 1")
        if self.prediction not in ("eps", "v"):
            raise ValueError(f"prediction={self.prediction!r}: expected 'eps' or 'v'")
        if self.loss_weighting not in ("none", "min_snr"):
            raise ValueError(f"loss_weighting={self.loss_weighting!r}: expected 'none' or 'min_snr'")
        if self.timestep_sampling not in ("uniform", "logit_normal"):
            raise ValueError(f"timestep_sampling={self.timestep_sampling!r}: expected 'uniform' or 'logit_normal'")
        if self.logit_std <= 0:
            raise ValueError(f"logit_std={self.logit_std}: must be > 0")
        if self.snr_gamma <= 0:
            raise ValueError(f"snr_gamma={self.snr_gamma}: must be > 0")


def linear_betas(timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """DDPM's schedule: ``beta_t`` evenly spaced from ``beta_start`` to ``beta_end`` (float64, shape (T,))."""
    return torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)


def cosine_betas(timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal's schedule: ``alpha_bar(t) = f(t) / f(0)``, ``f(t) = cos^2(((t / T) + s) / (1 + s) * pi / 2)``.

    ``beta_t = 1 - alpha_bar(t + 1) / alpha_bar(t)``, clipped at ``max_beta`` so the last
    step is not singular. Float64, shape (T,).
    """
    steps = torch.arange(timesteps + 1, dtype=torch.float64)
    f = torch.cos((steps / timesteps + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


class NoiseSchedule(nn.Module):
    """``betas``, ``alphas_cumprod`` (= alpha_bar) and their square roots as (T,) float32 buffers.

    The buffers are not persistent: they are recomputed from the config, never
    stored in checkpoints. Every method takes integer timesteps ``t`` of shape (B,).
    """

    def __init__(self, cfg: DiffusionConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or DiffusionConfig()
        self.cfg = cfg
        if cfg.schedule == "linear":
            betas = linear_betas(cfg.timesteps, cfg.beta_start, cfg.beta_end)
        else:
            betas = cosine_betas(cfg.timesteps)
        alpha_bar = torch.cumprod(1 - betas, dim=0)  # in float64: the product of 1000 factors
        self.register_buffer("betas", betas.float(), persistent=False)
        self.register_buffer("alphas_cumprod", alpha_bar.float(), persistent=False)
        self.register_buffer("sqrt_alphas_cumprod", alpha_bar.sqrt().float(), persistent=False)
        self.register_buffer("sqrt_one_minus_alphas_cumprod", (1 - alpha_bar).sqrt().float(), persistent=False)
        # signal-to-noise ratio alpha_bar / (1 - alpha_bar), from float64: 1 - alpha_bar is tiny at t = 0
        self.register_buffer("snr", (alpha_bar / (1 - alpha_bar)).float(), persistent=False)

    @property
    def timesteps(self) -> int:
        return self.cfg.timesteps

    def _at(self, values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``values[t]`` shaped ``(B, 1, 1, ...)`` to broadcast against ``like``."""
        if t.dim() != 1 or t.shape[0] != like.shape[0]:
            raise ValueError(f"t: expected shape ({like.shape[0]},), got {tuple(t.shape)}")
        if bool((t < 0).any()) or bool((t >= self.timesteps).any()):
            raise ValueError(f"t: timesteps must lie in [0, {self.timesteps}), got {t.tolist()}")
        return values[t].to(like.dtype).view(-1, *([1] * (like.dim() - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The forward process in closed form: ``sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise``."""
        return (
            self._at(self.sqrt_alphas_cumprod, t, x0) * x0 + self._at(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise
        )

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Invert :meth:`q_sample` given the noise: ``(x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)``."""
        return (x_t - self._at(self.sqrt_one_minus_alphas_cumprod, t, x_t) * eps) / self._at(
            self.sqrt_alphas_cumprod, t, x_t
        )

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network learns to output for ``x_t = q_sample(x0, t, noise)``: ``noise``, or ``v``."""
        if self.cfg.prediction == "eps":
            return noise
        return (
            self._at(self.sqrt_alphas_cumprod, t, x0) * noise - self._at(self.sqrt_one_minus_alphas_cumprod, t, x0) * x0
        )

    def loss_weights(self, t: torch.Tensor) -> torch.Tensor:
        """Per-sample loss weights ``(B,)``: 1, or Min-SNR-gamma.

        ``min(SNR, gamma) / SNR`` for eps, ``min(SNR, gamma) / (SNR + 1)`` for v.
        """
        if self.cfg.loss_weighting == "none":
            return torch.ones(t.shape, device=t.device)
        snr = self.snr[t]
        return snr.clamp(max=self.cfg.snr_gamma) / (snr if self.cfg.prediction == "eps" else snr + 1)

    def sample_timesteps(self, batch: int, device: torch.device, generator: torch.Generator | None = None):
        """Training timesteps ``(B,)`` long: uniform over ``[0, T)``, or logit-normal (``cfg.timestep_sampling``)."""
        if self.cfg.timestep_sampling == "uniform":
            return torch.randint(0, self.timesteps, (batch,), device=device, generator=generator)
        n = torch.randn(batch, device=device, generator=generator) * self.cfg.logit_std + self.cfg.logit_mean
        return (torch.sigmoid(n) * self.timesteps).long().clamp_(0, self.timesteps - 1)


def ddpm_loss(
    model_fn: ModelFn,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    t: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """DDPM's loss ``w_t || target - model_fn(q_sample(x0, t, noise), t) ||^2``, averaged over every element.

    ``target`` is the noise or ``v`` (:meth:`NoiseSchedule.target`); ``w_t`` is
    :meth:`NoiseSchedule.loss_weights` (1 unless the schedule asks for Min-SNR).
    ``t`` (B,) defaults to uniform timesteps and ``noise`` to standard normal noise.
    """
    if t is None:
        t = schedule.sample_timesteps(x0.shape[0], x0.device, generator)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    error = (model_fn(schedule.q_sample(x0, t, noise), t) - schedule.target(x0, noise, t)).pow(2)
    weights = schedule.loss_weights(t).to(error.dtype).view(-1, *([1] * (error.dim() - 1)))
    return (weights * error).mean()


def guided(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: ``uncond + scale * (cond - uncond)``; scale 1 = conditional, 0 = unconditional."""
    return uncond + scale * (cond - uncond)


def ddim_timesteps(timesteps: int, steps: int) -> list[int]:
    """``steps`` evenly spaced timesteps from ``T - 1`` down to 0 (inclusive), strictly decreasing."""
    if not 1 <= steps <= timesteps:
        raise ValueError(f"steps={steps}: expected 1 <= steps <= timesteps={timesteps}")
    if steps == 1:
        return [timesteps - 1]
    # round (not floor) the even grid so both ends, T-1 and 0, are always visited
    grid = [round(i * (timesteps - 1) / (steps - 1)) for i in range(steps)]
    return sorted(set(grid), reverse=True)


@torch.no_grad()
def ddim_sample(
    model_fn: ModelFn,
    schedule: NoiseSchedule,
    shape: tuple[int, ...],
    steps: int = 50,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    x_T: torch.Tensor | None = None,
    clip_x0: float | None = 1.0,
    progress: bool = False,
) -> torch.Tensor:
    """Run DDIM from pure noise ``x_T`` (drawn from ``generator`` unless given) to ``x_0`` of ``shape``.

    ``model_fn`` returns what the schedule's config says the network predicts (eps or v).

    ``clip_x0`` clamps each step's ``x0`` estimate to ``[-clip_x0, clip_x0]`` (images live in
    [-1, 1]); None turns clamping off. ``progress`` shows a tqdm bar.
    """
    if eta < 0:
        raise ValueError(f"eta={eta}: must be >= 0")
    prediction = schedule.cfg.prediction
    x = torch.randn(shape, generator=generator, device=device) if x_T is None else x_T.clone()
    alpha_bar = schedule.alphas_cumprod.to(x.device, torch.float64)
    times = ddim_timesteps(schedule.timesteps, steps)
    iterator = times
    if progress:
        from tqdm import tqdm

        iterator = tqdm(times, desc="sampling", unit="step", leave=False)
    for i, t in enumerate(iterator):
        t_batch = torch.full((shape[0],), t, device=x.device, dtype=torch.long)
        out = model_fn(x, t_batch)
        a_t = alpha_bar[t]
        a_s = alpha_bar[times[i + 1]] if i + 1 < len(times) else torch.ones((), dtype=torch.float64, device=x.device)
        sa, sb = a_t.sqrt().float(), (1 - a_t).sqrt().float()
        if prediction == "eps":
            eps, x0 = out, (x - sb * out) / sa
        else:
            eps, x0 = sb * x + sa * out, sa * x - sb * out
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
            # re-derive eps from the clamped x0 so the step stays on the DDIM trajectory of that x0
            eps = (x - sa * x0) / sb
        sigma = eta * ((1 - a_s) / (1 - a_t)).sqrt() * (1 - a_t / a_s).sqrt()
        direction = (1 - a_s - sigma**2).clamp_min(0).sqrt()
        x = a_s.sqrt().float() * x0 + direction.float() * eps
        if eta > 0 and i + 1 < len(times):
            x = x + sigma.float() * torch.randn(x.shape, generator=generator, device=x.device)
    return x


__all__ = [
    "DiffusionConfig",
    "ModelFn",
    "NoiseSchedule",
    "cosine_betas",
    "ddim_sample",
    "ddim_timesteps",
    "ddpm_loss",
    "guided",
    "linear_betas",
]
