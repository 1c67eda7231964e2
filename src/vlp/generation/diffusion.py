"""Denoising diffusion: noise schedules, the DDPM training loss, the DDIM sampler and classifier-free guidance.

Notation (Ho et al. 2020; Song et al. 2021): ``beta_t`` is the noise added at step
``t`` (0-based, ``t = 0 .. T-1``), ``alpha_bar_t = prod_{s <= t} (1 - beta_s)``, and the
forward process has the closed form ``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps``.
The network predicts ``eps`` (epsilon prediction); the loss is the MSE between
predicted and true noise (DDPM's "simple" loss), optionally weighted per timestep
by Min-SNR-gamma (Hang et al. 2023): ``min(SNR_t, gamma) / SNR_t`` with
``SNR_t = alpha_bar_t / (1 - alpha_bar_t)``, which lowers the weight of the
nearly noise-free steps (fine texture) so that a short run spends its updates on
layout, shape and colour.

DDIM (Song et al., eq. 12) steps from ``t`` to an earlier ``s`` with

    x0_hat = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)
    sigma  = eta * sqrt((1 - a_s) / (1 - a_t)) * sqrt(1 - a_t / a_s)
    x_s    = sqrt(a_s) x0_hat + sqrt(1 - a_s - sigma^2) eps + sigma z

with ``a = alpha_bar`` and ``a_s = 1`` after the last step; ``eta = 0`` is the
deterministic sampler, ``eta = 1`` matches DDPM's ancestral sampler.
Classifier-free guidance (Ho & Salimans 2022) mixes a conditional and an
unconditional prediction: ``eps = eps_uncond + s (eps_cond - eps_uncond)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t (B, ...), t (B,) long) -> eps (B, ...)


@dataclass
class DiffusionConfig:
    """The noise schedule: ``timesteps`` steps of a ``linear`` (DDPM) or ``cosine`` (Nichol & Dhariwal) schedule."""

    timesteps: int = 1000
    schedule: Literal["linear", "cosine"] = "cosine"
    beta_start: float = 1e-4  # linear schedule only
    beta_end: float = 0.02  # linear schedule only
    loss_weighting: Literal["none", "min_snr"] = "none"
    snr_gamma: float = 5.0  # min_snr only

    def __post_init__(self) -> None:
        if self.loss_weighting not in ("none", "min_snr"):
            raise ValueError(f"loss_weighting={self.loss_weighting!r}: expected 'none' or 'min_snr'")
        if self.snr_gamma <= 0:
            raise ValueError(f"snr_gamma={self.snr_gamma}: must be > 0")
        if self.timesteps < 2:
            raise ValueError(f"timesteps={self.timesteps}: must be >= 2")
        if self.schedule not in ("linear", "cosine"):
            raise ValueError(f"schedule={self.schedule!r}: expected 'linear' or 'cosine'")
        if not 0 < self.beta_start <= self.beta_end < 1:
            raise ValueError(f"beta_start={self.beta_start}, beta_end={self.beta_end}: expected 0 < start <= end < 1")


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

    def loss_weights(self, t: torch.Tensor) -> torch.Tensor:
        """Per-sample weights ``(B,)`` of the noise MSE: 1, or ``min(SNR_t, gamma) / SNR_t`` for min_snr."""
        if self.cfg.loss_weighting == "none":
            return torch.ones(t.shape, device=t.device)
        snr = self.snr[t]
        return snr.clamp(max=self.cfg.snr_gamma) / snr

    def sample_timesteps(self, batch: int, device: torch.device, generator: torch.Generator | None = None):
        """Uniform training timesteps ``(B,)`` long."""
        return torch.randint(0, self.timesteps, (batch,), device=device, generator=generator)


def ddpm_loss(
    eps_fn: EpsFn,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    t: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """DDPM's loss ``w_t || eps - eps_fn(q_sample(x0, t, eps), t) ||^2``, averaged over every element.

    ``w_t`` is :meth:`NoiseSchedule.loss_weights` (1 unless the schedule asks for Min-SNR).
    ``t`` (B,) defaults to uniform timesteps and ``noise`` to standard normal noise.
    """
    if t is None:
        t = schedule.sample_timesteps(x0.shape[0], x0.device, generator)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    error = (eps_fn(schedule.q_sample(x0, t, noise), t) - noise).pow(2)
    weights = schedule.loss_weights(t).to(error.dtype).view(-1, *([1] * (error.dim() - 1)))
    return (weights * error).mean()


def guided_eps(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: ``eps_uncond + scale * (eps_cond - eps_uncond)`` (scale 1 = conditional only)."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


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
    eps_fn: EpsFn,
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

    ``clip_x0`` clamps each step's ``x0`` estimate to ``[-clip_x0, clip_x0]`` (images live in
    [-1, 1]); None turns clamping off. ``progress`` shows a tqdm bar.
    """
    if eta < 0:
        raise ValueError(f"eta={eta}: must be >= 0")
    x = torch.randn(shape, generator=generator, device=device) if x_T is None else x_T.clone()
    alpha_bar = schedule.alphas_cumprod.to(x.device, torch.float64)
    times = ddim_timesteps(schedule.timesteps, steps)
    iterator = times
    if progress:
        from tqdm import tqdm

        iterator = tqdm(times, desc="sampling", unit="step", leave=False)
    for i, t in enumerate(iterator):
        t_batch = torch.full((shape[0],), t, device=x.device, dtype=torch.long)
        eps = eps_fn(x, t_batch)
        a_t = alpha_bar[t]
        a_s = alpha_bar[times[i + 1]] if i + 1 < len(times) else torch.ones((), dtype=torch.float64, device=x.device)
        x0 = (x - (1 - a_t).sqrt().float() * eps) / a_t.sqrt().float()
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
            # re-derive eps from the clamped x0 so the step stays on the DDIM trajectory of that x0
            eps = (x - a_t.sqrt().float() * x0) / (1 - a_t).sqrt().float()
        sigma = eta * ((1 - a_s) / (1 - a_t)).sqrt() * (1 - a_t / a_s).sqrt()
        direction = (1 - a_s - sigma**2).clamp_min(0).sqrt()
        x = a_s.sqrt().float() * x0 + direction.float() * eps
        if eta > 0 and i + 1 < len(times):
            x = x + sigma.float() * torch.randn(x.shape, generator=generator, device=x.device)
    return x


__all__ = [
    "DiffusionConfig",
    "EpsFn",
    "NoiseSchedule",
    "cosine_betas",
    "ddim_sample",
    "ddim_timesteps",
    "ddpm_loss",
    "guided_eps",
    "linear_betas",
]
