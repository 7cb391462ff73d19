"""Samplers: plain functions over a VE denoiser (the k-diffusion pattern).

Every sampler has the signature
    sample_xxx(denoiser, x, sigmas, *, generator=None, callback=None, **options) -> x0
with
    denoiser(x: [B, C, H, W], sigma: [B]) -> x0_hat: [B, C, H, W]   (the VE form x = x0 + sigma n),
    x:      the starting noise, already scaled: randn(shape) * sigmas[0],
    sigmas: [N + 1] decreasing noise levels ending with 0 (see `sampling_sigmas`),
    generator: torch.Generator on x's device for the sampler's own noise,
    callback(i, N, x, x0_hat): called after step i (0 .. N - 1) with the new x and the step's x0_hat.
"""
import math

import torch

from .config import EDMConfig
from .ddpm import ContinuousDDPM
from .schedules import karras_sigmas


def _full(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return x.new_full((x.shape[0],), sigma)


def _randn_like(x: torch.Tensor, generator) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


@torch.no_grad()
def sample_heun(
    denoiser,
    x: torch.Tensor,
    sigmas,
    *,
    S_churn: float = 0.0,
    S_tmin: float = 0.0,
    S_tmax: float = float("inf"),
    S_noise: float = 1.0,
    generator=None,
    callback=None,
) -> torch.Tensor:
    """EDM's stochastic Heun sampler (Karras et al. 2022, Algorithm 2); S_churn = 0 is Algorithm 1.

    Each step first raises the noise from t_i to t_hat = (1 + gamma_i) t_i with
    gamma_i = min(S_churn / N, sqrt(2) - 1) when S_tmin <= t_i <= S_tmax (else 0), adding
    sqrt(t_hat^2 - t_i^2) S_noise eps, then takes an Euler step of dx/dt = (x - D(x, t)) / t to
    t_{i+1} with Heun's second-order correction, except on the last step to t_N = 0 (Euler only).
    x: [B, ...] = randn * sigmas[0]; returns x0: [B, ...]. 2N - 1 denoiser calls.
    """
    sigmas = torch.as_tensor(sigmas).tolist()
    N = len(sigmas) - 1
    for i in range(N):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        gamma = min(S_churn / N, math.sqrt(2) - 1) if S_tmin <= t_cur <= S_tmax else 0.0
        t_hat = t_cur + gamma * t_cur
        x_hat = x
        if gamma > 0:
            x_hat = x + math.sqrt(t_hat**2 - t_cur**2) * S_noise * _randn_like(x, generator)
        x0_hat = denoiser(x_hat, _full(x, t_hat))
        d_cur = (x_hat - x0_hat) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur
        if t_next != 0:
            d_prime = (x_next - denoiser(x_next, _full(x, t_next))) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
        x = x_next
        if callback is not None:
            callback(i, N, x, x0_hat)
    return x


@torch.no_grad()
def sample_ddpm_ancestral(denoiser, x: torch.Tensor, sigmas, *, generator=None, callback=None) -> torch.Tensor:
    """DDPM ancestral sampling (Ho et al. 2020) on any sigma grid, written in VE variables.

    The diffusion x_t = x_s + sqrt(sigma_t^2 - sigma_s^2) n (s < t) is the DDPM forward chain mapped by
    x = z / alpha, so its posterior q(x_s | x_t, x0) (Ho et al. eq. 7; Kingma et al. 2021 eq. 33) is
        N(x0 + (sigma_s / sigma_t)^2 (x_t - x0),  sigma_s^2 (1 - (sigma_s / sigma_t)^2) I).
    Each step draws x_s from it with x0 = D(x_t, sigma_t); the last step (sigma_s = 0) returns x0_hat.
    x: [B, ...] = randn * sigmas[0]; returns x0: [B, ...]. N denoiser calls.
    """
    sigmas = torch.as_tensor(sigmas).tolist()
    N = len(sigmas) - 1
    for i in range(N):
        sigma_t, sigma_s = sigmas[i], sigmas[i + 1]
        x0_hat = denoiser(x, _full(x, sigma_t))
        if sigma_s == 0:
            x = x0_hat
        else:
            ratio = (sigma_s / sigma_t) ** 2
            x = x0_hat + ratio * (x - x0_hat) + sigma_s * math.sqrt(1 - ratio) * _randn_like(x, generator)
        if callback is not None:
            callback(i, N, x, x0_hat)
    return x


@torch.no_grad()
def sample_dpmpp_2m(denoiser, x: torch.Tensor, sigmas, *, generator=None, callback=None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2) in VE form (alpha = 1).

    With lambda = -ln(sigma) and h_i = lambda_{i+1} - lambda_i, a step is
        x_{i+1} = (sigma_{i+1} / sigma_i) x_i - (e^{-h_i} - 1) D_i,
    D_0 = x0_0 and, from the second step on, D_i = (1 + 1 / (2 r_i)) x0_i - 1 / (2 r_i) x0_{i-1} with
    r_i = h_{i-1} / h_i. The last step to sigma = 0 (h infinite) returns x0_hat. Deterministic:
    `generator` is accepted for the common signature and unused. N denoiser calls.
    """
    sigmas = torch.as_tensor(sigmas).tolist()
    N = len(sigmas) - 1
    x0_prev, h_prev = None, None
    for i in range(N):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0_hat = denoiser(x, _full(x, sigma))
        if sigma_next == 0:
            x = x0_hat
        else:
            h = math.log(sigma) - math.log(sigma_next)
            D = x0_hat
            if x0_prev is not None:
                r = h_prev / h
                D = (1 + 1 / (2 * r)) * x0_hat - (1 / (2 * r)) * x0_prev
            x = (sigma_next / sigma) * x - math.expm1(-h) * D
            h_prev = h
        x0_prev = x0_hat
        if callback is not None:
            callback(i, N, x, x0_hat)
    return x


SAMPLERS = {"edm": sample_heun, "ddpm": sample_ddpm_ancestral, "dpmpp": sample_dpmpp_2m}

# Steps when none are given, except for the DDPM ancestral sampler on a ContinuousDDPM (which uses
# DDPMConfig.timesteps): NeMo's EDM sampler default and the Rosetta Imagen recipe both use 50.
DEFAULT_STEPS = 50


def sampling_sigmas(precond, sampler: str, steps=None) -> torch.Tensor:
    """The default sigma schedule for a (preconditioning, sampler, steps) choice: [steps + 1] float64.

    EDMPreconditioning: its Karras schedule (sigma_min, sigma_max, rho from EDMConfig), every sampler.
    ContinuousDDPM with `ddpm` or `dpmpp`: the DDPM time grid t = 1, 1 - 1/steps, ..., 1/steps
    (`ContinuousDDPM.sigmas`). ContinuousDDPM with `edm` (Heun): Karras sigmas over the schedule's
    range capped at EDM's defaults, [max(sigma_min, 0.002), min(sigma_max, 80)] with rho = 7. Heun
    integrates in sigma, and the cosine time grid's first step (sigma 2.2e4 -> 23 at 50 steps) is far
    outside its accuracy (it inflates the sample variance many times over); sigma 80 already hides
    images in [-1, 1] completely.
    steps=None: DDPMConfig.timesteps for `ddpm` on a ContinuousDDPM, else DEFAULT_STEPS.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler: {sampler!r} is not one of {', '.join(SAMPLERS)}")
    is_ddpm = isinstance(precond, ContinuousDDPM)
    if steps is None:
        steps = precond.cfg.timesteps if is_ddpm and sampler == "ddpm" else DEFAULT_STEPS
    if is_ddpm and sampler == "edm":
        edm = EDMConfig()
        sigma_min, sigma_max = max(precond.sigma_min, edm.sigma_min), min(precond.sigma_max, edm.sigma_max)
        return karras_sigmas(steps, sigma_min, sigma_max, edm.rho)
    return precond.sigmas(steps)
