"""Noise-conditioning augmentation of a super-resolution stage's low-resolution input (Imagen, Sec. 2.5).

During training the low-res image is corrupted with Gaussian noise of a random level and the UNet is
told the level; at sampling a small fixed level is used. This makes an SR stage robust to the artefacts
of the stage below it. The corruption is the stage's own forward process, so it works the same way for
every preconditioning (NeMo had it for EDM only):
- the level is a variance-exploding sigma: lowres_noisy = lowres + sigma n;
- training levels come from the preconditioning's training distribution (EDM: ln sigma ~ N(p_mean,
  p_std^2), as NeMo did; DDPM: t ~ U(0, 1), Imagen's uniform augmentation level);
- the network sees what the preconditioning feeds its main input (EDM: c_in(sigma) x and ln(sigma)/4;
  DDPM: alpha x and the log-SNR), so the augmentation level uses the main noise level's convention;
- the default sampling level is the preconditioning's smallest sigma (EDM 0.002, NeMo's choice;
  DDPM the schedule's t = 0 level).
"""
from typing import Dict, Optional, Tuple

import torch

from .utils import append_dims


def augment_lowres(
    precond,
    lowres: torch.Tensor,
    sigma: torch.Tensor,
    generator: Optional[torch.Generator] = None,
    noise: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Corrupts `lowres` [B, C, h, w] at VE noise levels `sigma` [B] (> 0) with `noise` [B, C, h, w]
    (standard normal; drawn from `generator` when None).

    Returns (lowres_in [B, C, h, w], lowres_noise_cond [B]): the network's view of lowres + sigma n
    under `precond` (see `network_input`)."""
    if sigma.device.type != "meta" and not bool((sigma > 0).all()):  # meta: shapes only (FLOP counting)
        raise ValueError(f"noise_cond_aug: augmentation sigmas must be > 0, got min {sigma.min().item()!r}")
    if noise is None:
        noise = torch.randn(lowres.shape, generator=generator, device=lowres.device, dtype=lowres.dtype)
    noisy = lowres + append_dims(sigma.to(lowres.dtype), lowres.ndim) * noise
    return precond.network_input(noisy, sigma)


def lowres_inputs(
    precond,
    lowres: torch.Tensor,
    noise_cond_aug: bool,
    sigma: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    noise: Optional[torch.Tensor] = None,
) -> Dict[str, Optional[torch.Tensor]]:
    """A super-resolution UNet's low-res keyword arguments for images `lowres` [B, C, h, w]: with
    `noise_cond_aug`, corrupted at VE levels `sigma` [B] (see `augment_lowres`); otherwise passed as they are.
    -> {"lowres": [B, C, h, w], "lowres_noise_cond": [B] or None}."""
    if not noise_cond_aug:
        return {"lowres": lowres, "lowres_noise_cond": None}
    lowres_in, lowres_noise_cond = augment_lowres(precond, lowres, sigma, generator, noise=noise)
    return {"lowres": lowres_in, "lowres_noise_cond": lowres_noise_cond}


def training_augmentation_sigma(precond, batch_size: int, generator=None, device=None) -> torch.Tensor:
    """Random augmentation levels for a training batch: [batch_size] VE sigmas."""
    return precond.sample_training_sigma(batch_size, generator=generator, device=device)


def sampling_augmentation_sigma(precond, batch_size: int, sigma: Optional[float] = None, device=None) -> torch.Tensor:
    """The fixed augmentation level at sampling: `sigma`, or the preconditioning's smallest sigma: [batch_size]."""
    level = precond.sigma_min if sigma is None else float(sigma)
    if not level > 0:
        raise ValueError(f"noise_cond_aug_sigma: must be > 0, got {level!r}")
    return torch.full((batch_size,), level, device=device)
