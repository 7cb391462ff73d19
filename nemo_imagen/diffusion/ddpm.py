"""Continuous-time DDPM (Imagen's formulation, after Kingma et al. 2021 "Variational Diffusion Models").

Time t in [0, 1] maps to a log signal-to-noise ratio logsnr(t) (decreasing). The variance-preserving
latent is z = alpha x0 + sigma_t eps with alpha^2 = sigmoid(logsnr), sigma_t^2 = sigmoid(-logsnr);
the UNet sees z and noise_cond = logsnr, and predicts eps or x0.

Samplers work in the variance-exploding variables x = z / alpha = x0 + sigma eps with
sigma = sigma_t / alpha = exp(-logsnr / 2), so logsnr = -2 ln(sigma).
"""
import math

import torch

from .config import DDPMConfig
from .losses import per_sample_loss
from .utils import append_dims

# Both schedules are clamped to this log-SNR range. The cosine schedule reaches -inf at t = 1 (alpha
# = 0); the clamp makes its largest sigma exp(10) ~ 2.2e4, at which the data is invisible in the noise
# (alpha ~ 4.5e-5). Inside the range nothing is clamped: cosine spans [-20, 8.77], linear [-10.0, 9.21].
LOG_SNR_MIN = -20.0
LOG_SNR_MAX = 20.0

# Offset s of Nichol & Dhariwal's cosine schedule, which keeps beta small near t = 0.
COSINE_S = 0.008


def cosine_log_snr(t: torch.Tensor) -> torch.Tensor:
    """Log-SNR of alpha_bar(t) = cos^2(((t + s) / (1 + s)) pi / 2), s = 0.008: t [B] -> [B].

    logsnr = -log(cos^-2(a) - 1) = -log(tan^2(a)) = 2 log tan(pi/2 - a), computed from
    pi/2 - a = (pi / 2) (1 - t) / (1 + s), which is exact and non-negative in floating point.
    Clamped to [LOG_SNR_MIN, LOG_SNR_MAX].
    """
    return (2 * torch.log(torch.tan(math.pi / 2 * (1 - t) / (1 + COSINE_S)))).clamp(LOG_SNR_MIN, LOG_SNR_MAX)


def linear_log_snr(t: torch.Tensor) -> torch.Tensor:
    """Continuous version of Ho et al.'s betas, linear from 1e-4 to 0.02 over 1000 steps: t [B] -> [B].

    -log alpha_bar(t) = 1e-4 + 10 t^2 (alpha_bar(0) = 1 - beta_1), so logsnr = log(alpha_bar / (1 -
    alpha_bar)) = -log(expm1(1e-4 + 10 t^2)). This is the form Imagen implementations use; it drops the
    0.1 t term of 1000 * integral(beta) = 0.1 t + 9.95 t^2, so -log alpha_bar differs from the discrete
    product prod(1 - beta_k) by at most 0.14 (the SNR by up to a factor e near t = 0.003).
    Clamped to [LOG_SNR_MIN, LOG_SNR_MAX] (inactive: the schedule spans [-10.0, 9.21]).
    """
    return (-torch.log(torch.expm1(1e-4 + 10 * t.square()))).clamp(LOG_SNR_MIN, LOG_SNR_MAX)


LOG_SNR_SCHEDULES = {"cosine": cosine_log_snr, "linear": linear_log_snr}


def alpha_sigma_from_log_snr(log_snr: torch.Tensor):
    """(alpha, sigma_t) with alpha^2 = sigmoid(logsnr), sigma_t^2 = sigmoid(-logsnr): [B] -> ([B], [B])."""
    return torch.sigmoid(log_snr).sqrt(), torch.sigmoid(-log_snr).sqrt()


class ContinuousDDPM:
    """Continuous DDPM training loss and a VE-form denoiser around a raw network.

    A raw network is `net(z, noise_cond, **cond) -> out` with z, out: [B, C, H, W] and
    noise_cond = logsnr: [B]; out is eps_hat or x0_hat per `cfg.pred_objective`.
    """

    def __init__(self, cfg: DDPMConfig):
        self.cfg = cfg
        self.log_snr = LOG_SNR_SCHEDULES[cfg.noise_schedule]
        log_snr_ends = self.log_snr(torch.tensor([0.0, 1.0], dtype=torch.float64))
        self.sigma_min = math.exp(-log_snr_ends[0].item() / 2)
        self.sigma_max = math.exp(-log_snr_ends[1].item() / 2)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """VE noise level at time t: sigma = exp(-logsnr(t) / 2), [B] -> [B]."""
        return torch.exp(-self.log_snr(t) / 2)

    def sigmas(self, n: int) -> torch.Tensor:
        """The DDPM time grid t = 1, 1 - 1/n, ..., 1/n as VE sigmas, then 0 (= t 0, clean data): [n + 1]
        float64. This is the grid of the discrete ancestral sampler with n steps."""
        if n < 1:
            raise ValueError(f"n: the number of sampling steps must be >= 1, got {n}")
        t = torch.linspace(1.0, 0.0, n + 1, dtype=torch.float64)[:-1]
        return torch.cat([self.sigma(t), t.new_zeros(1)])

    def sample_training_sigma(self, batch_size: int, generator=None, device=None) -> torch.Tensor:
        """The training noise distribution as VE sigmas: t ~ U(0, 1), sigma = exp(-logsnr(t) / 2): [batch_size]."""
        return self.sigma(torch.rand(batch_size, generator=generator, device=device))

    def network_input(self, x: torch.Tensor, sigma: torch.Tensor):
        """What the raw network sees for x = x0 + sigma eps: (z = alpha x, logsnr = -2 ln sigma), [B, ...] and [B]."""
        log_snr = -2 * sigma.log()
        alpha, _ = alpha_sigma_from_log_snr(log_snr)
        return append_dims(alpha, x.ndim) * x, log_snr

    def denoise(self, net, x: torch.Tensor, sigma: torch.Tensor, **cond) -> torch.Tensor:
        """VE-form denoiser: x = x0 + sigma eps: [B, C, H, W], sigma: [B] -> x0_hat: [B, C, H, W].

        logsnr = -2 ln(sigma), z = alpha x, and x0_hat = x - sigma eps_hat (noise objective) or the
        network's x0 prediction (x_start objective), unclamped.
        """
        pred = net(*self.network_input(x, sigma), **cond)
        if self.cfg.pred_objective == "noise":
            return x - append_dims(sigma, x.ndim) * pred
        return pred

    def loss(self, net, x0: torch.Tensor, generator=None, sigma=None, noise=None, **cond) -> torch.Tensor:
        """Per-sample training loss: [B].

        x0: [B, C, H, W] clean images. t ~ U(0, 1) and eps ~ N(0, I) come from `generator`;
        sigma: [B] VE noise levels replace the drawn t when given (logsnr = -2 ln sigma); noise: [B, C, H, W]
        replaces the drawn eps when given.
        z = alpha x0 + sigma_t eps; the loss is `loss_type` (l1, l2, huber; see `per_sample_loss`) of
        net(z, logsnr) - target with target eps (noise) or x0 (x_start), unweighted.
        """
        if sigma is None:
            t = torch.rand(x0.shape[0], generator=generator, device=x0.device)
            log_snr = self.log_snr(t)
        else:
            log_snr = -2 * sigma.log()
        alpha, sigma_t = alpha_sigma_from_log_snr(log_snr)
        eps = noise if noise is not None else torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        z = append_dims(alpha, x0.ndim) * x0 + append_dims(sigma_t, x0.ndim) * eps
        pred = net(z, log_snr, **cond)
        target = eps if self.cfg.pred_objective == "noise" else x0
        return per_sample_loss(pred - target, self.cfg.loss_type)
