"""Training randomness drawn per sample, keyed by the sample's identity and the optimizer step.

Drawn from one global RNG, the noise a sample gets depends on where it landed: which rank, which micro batch,
which row; and every data-parallel rank draws the same stream (all ranks share one seed). Drawing each sample's
noise level, text-dropout coin and Gaussian noise from its own generator, seeded by (seed, optimizer step,
sample key), makes an optimizer step a function of the global batch's samples alone: 2 ranks x micro batch 2
give the same update as 1 process x micro batch 4, or x micro batch 2 with 2 accumulation steps.
"""
import hashlib
from typing import NamedTuple, Optional, Sequence, Tuple

import torch

from nemo_imagen.diffusion import lowres_inputs, sample_drop_mask, training_augmentation_sigma


class TrainingDraws(NamedTuple):
    sigma: torch.Tensor  # [B] noise levels (VE sigma; for DDPM sigma(t) of a uniform t)
    drop_text: torch.Tensor  # [B] bool, True where the text is dropped (classifier-free guidance)
    noise: torch.Tensor  # [B, C, H, W] standard normal
    lowres_sigma: Optional[torch.Tensor] = None  # [B] SR stages: noise-conditioning augmentation levels
    lowres_noise: Optional[torch.Tensor] = None  # [B, C, h, w] standard normal for the low-res input


def sample_seed(seed: int, step: int, key: str) -> int:
    """A 63-bit seed from (seed, step, key); stable across processes (Python's str hash is salted per process)."""
    digest = hashlib.blake2b(f"{seed}/{step}/{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def draw_per_sample(
    precond,
    keys: Sequence[str],
    seed: int,
    step: int,
    image_shape: Tuple[int, ...],
    drop_rate: float,
    device,
    lowres_shape: Optional[Tuple[int, ...]] = None,
) -> TrainingDraws:
    """Each sample's sigma, text-drop coin and noise [C, H, W] from its own generator (in that order), then for
    an SR stage (`lowres_shape` given) its augmentation level and low-res noise [C, h, w].

    B small draws instead of three batched ones: negligible next to a UNet step (B generators of a few bytes each).
    """
    sigmas, drops, noises, lowres_sigmas, lowres_noises = [], [], [], [], []
    for key in keys:
        generator = torch.Generator(device=device).manual_seed(sample_seed(seed, step, key))
        sigmas.append(precond.sample_training_sigma(1, generator=generator, device=device))
        drops.append(sample_drop_mask(1, drop_rate, generator=generator, device=device))
        noises.append(torch.randn(tuple(image_shape), generator=generator, device=device))
        if lowres_shape is not None:
            lowres_sigmas.append(training_augmentation_sigma(precond, 1, generator=generator, device=device))
            lowres_noises.append(torch.randn(tuple(lowres_shape), generator=generator, device=device))
    draws = TrainingDraws(torch.cat(sigmas), torch.cat(drops), torch.stack(noises))
    if lowres_shape is None:
        return draws
    return draws._replace(lowres_sigma=torch.cat(lowres_sigmas), lowres_noise=torch.stack(lowres_noises))


def batched_draws(
    precond,
    batch_size: int,
    image_shape: Tuple[int, ...],
    drop_rate: float,
    device,
    lowres_shape: Optional[Tuple[int, ...]] = None,
) -> TrainingDraws:
    """The same draws as `draw_per_sample`, batched from the global RNG: for FLOP counting, where no
    per-sample generator exists (the meta device) and only shapes matter."""
    draws = TrainingDraws(
        precond.sample_training_sigma(batch_size, device=device),
        sample_drop_mask(batch_size, drop_rate, device=device),
        torch.randn((batch_size, *image_shape), device=device),
    )
    if lowres_shape is None:
        return draws
    return draws._replace(
        lowres_sigma=training_augmentation_sigma(precond, batch_size, device=device),
        lowres_noise=torch.randn((batch_size, *lowres_shape), device=device),
    )


def diffusion_loss(
    precond,
    net,
    images: torch.Tensor,
    text_embed: torch.Tensor,
    text_mask: torch.Tensor,
    draws: TrainingDraws,
    lowres: Optional[torch.Tensor] = None,
    noise_cond_aug: bool = False,
) -> torch.Tensor:
    """The mean training loss of a batch: images [B, C, H, W] noised with `draws` (noise level, noise, text-drop
    coin), and for an SR stage its low-res input `lowres` [B, C, h, w], augmented with the draws' levels and
    noise when `noise_cond_aug`. Scalar."""
    cond = {}
    if lowres is not None:
        cond = lowres_inputs(precond, lowres, noise_cond_aug, draws.lowres_sigma, noise=draws.lowres_noise)
    return precond.loss(
        net, images, sigma=draws.sigma, noise=draws.noise.to(images.dtype), text_embed=text_embed,
        text_mask=text_mask, drop_text=draws.drop_text, **cond,
    ).mean()
