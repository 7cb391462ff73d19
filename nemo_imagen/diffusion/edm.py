"""EDM preconditioning (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
Generative Models", Table 1, column "Ours").

The raw network F sees a unit-variance input and a scalar noise embedding; the denoiser is
    D(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma)).
"""
import torch

from .config import EDMConfig
from .losses import per_sample_loss
from .schedules import karras_sigmas
from .utils import append_dims


def edm_coefficients(sigma: torch.Tensor, sigma_data: float):
    """Preconditioning coefficients at noise level sigma: [B] -> (c_skip, c_out, c_in, c_noise), each [B].

    c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2),
    c_in = 1 / sqrt(sigma^2 + sd^2), c_noise = ln(sigma) / 4, with sd = sigma_data.
    """
    norm = (sigma.square() + sigma_data**2).sqrt()
    c_skip = sigma_data**2 / norm.square()
    c_out = sigma * sigma_data / norm
    c_in = 1.0 / norm
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


def edm_loss_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2 = 1 / c_out^2, sigma: [B] -> [B]."""
    return (sigma.square() + sigma_data**2) / (sigma * sigma_data).square()


class EDMPreconditioning:
    """EDM's denoiser, training loss and noise distributions around a raw network.

    A raw network is `net(x_in, noise_cond, **cond) -> out` with x_in, out: [B, C, H, W] and
    noise_cond = c_noise: [B]. `cond` (text_embed, text_mask, drop_text, ...) passes through untouched.
    """

    def __init__(self, cfg: EDMConfig):
        self.cfg = cfg
        self.sigma_min = cfg.sigma_min
        self.sigma_max = cfg.sigma_max

    def coefficients(self, sigma: torch.Tensor):
        """(c_skip, c_out, c_in, c_noise) at sigma: [B], each [B]; see `edm_coefficients`."""
        return edm_coefficients(sigma, self.cfg.sigma_data)

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """lambda(sigma): [B]; see `edm_loss_weight`."""
        return edm_loss_weight(sigma, self.cfg.sigma_data)

    def sample_training_sigma(self, batch_size: int, generator=None, device=None) -> torch.Tensor:
        """Training noise levels, ln(sigma) ~ N(p_mean, p_std^2): [batch_size] float32 (the name every
        preconditioning shares)."""
        ln_sigma = torch.randn(batch_size, generator=generator, device=device) * self.cfg.p_std + self.cfg.p_mean
        return ln_sigma.exp()

    def sigmas(self, n: int) -> torch.Tensor:
        """The sampling schedule: n Karras noise levels from sigma_max to sigma_min, then 0: [n + 1]."""
        return karras_sigmas(n, self.sigma_min, self.sigma_max, self.cfg.rho)

    def network_input(self, x: torch.Tensor, sigma: torch.Tensor):
        """What the raw network sees for noisy images x = x0 + sigma n: (c_in x, c_noise), [B, ...] and [B]."""
        _, _, c_in, c_noise = self.coefficients(sigma)
        return append_dims(c_in, x.ndim) * x, c_noise

    def denoise(self, net, x: torch.Tensor, sigma: torch.Tensor, **cond) -> torch.Tensor:
        """D(x, sigma) = c_skip x + c_out net(c_in x, c_noise, **cond).

        x: [B, C, H, W] noisy images x0 + sigma n; sigma: [B]. Returns x0_hat: [B, C, H, W].
        """
        c_skip, c_out, _, _ = self.coefficients(sigma)
        F_x = net(*self.network_input(x, sigma), **cond)
        return append_dims(c_skip, x.ndim) * x + append_dims(c_out, x.ndim) * F_x

    def loss(self, net, x0: torch.Tensor, generator=None, sigma=None, noise=None, **cond) -> torch.Tensor:
        """Per-sample training loss: [B].

        x0: [B, C, H, W] clean images; sigma: [B] noise levels, drawn with `sample_training_sigma` when None;
        noise: [B, C, H, W] standard normal n, drawn from `generator` when None.
        With r = sqrt(lambda(sigma)) (D(x0 + sigma n, sigma) - x0), n ~ N(0, I) from `generator`:
          l2:    mean(r^2) = lambda mean((D - x0)^2), the paper's loss;
          l1:    mean(|r|);
          huber: mean(huber(r)) (quadratic for |r| < 1).
        Since sqrt(lambda) = 1 / c_out, r is exactly the raw network's error F - F_target, so all
        three losses act on the quantity the network outputs, at unit scale for every sigma.
        """
        if sigma is None:
            sigma = self.sample_training_sigma(x0.shape[0], generator=generator, device=x0.device)
        n = noise if noise is not None else torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x = x0 + append_dims(sigma, x0.ndim) * n
        D_x = self.denoise(net, x, sigma, **cond)
        r = append_dims(self.loss_weight(sigma).sqrt(), x0.ndim) * (D_x - x0)
        return per_sample_loss(r, self.cfg.loss_type)
