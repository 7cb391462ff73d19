"""Training one stage, as plain torch: the loss, its random draws, the text-drop mask, and the optimizer step.

`MegatronImagen` (models/imagen.py) calls these from its Lightning hooks (Lightning runs backward, clipping and
the optimizer between them); the benchmark (benchmarks/throughput.py) calls `train_step`, which runs the same
functions in Lightning's order, so both time and train the same step.

Training randomness is drawn per sample, keyed by the sample's identity and the optimizer step. Drawn from one
global RNG, the noise a sample gets depends on where it landed: which rank, which micro batch, which row; and
every data-parallel rank draws the same stream (all ranks share one seed). Drawing each sample's noise level,
text-dropout coin and Gaussian noise from its own generator, seeded by (seed, optimizer step, sample key), makes
an optimizer step a function of the global batch's samples alone: 2 ranks x micro batch 2 give the same update
as 1 process x micro batch 4, or x micro batch 2 with 2 accumulation steps.
"""
import contextlib
import hashlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

from .noise_aug import lowres_inputs, training_augmentation_sigma
from .numerics import all_finite


def sample_drop_mask(batch_size: int, drop_rate: float, generator=None, device=None) -> torch.Tensor:
    """Training-time text dropout: [batch_size] bool, each True (unconditional) with probability drop_rate."""
    if not 0.0 <= drop_rate <= 1.0:
        raise ValueError(f"drop_rate: must be in [0, 1], got {drop_rate!r}")
    return torch.rand(batch_size, generator=generator, device=device) < drop_rate


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


def step_seed(seed: int, epoch: int, batch_in_epoch: int, rank: int) -> int:
    """The seed of one training micro batch's randomness (noise levels, noise, text dropout, dropout).

    Seeding each micro batch from its position, instead of letting one generator run on, makes a resumed
    run draw exactly what the uninterrupted run drew, whatever else consumed random numbers in between
    (e.g. a DataLoader drawing its workers' base seed when an epoch starts)."""
    return int(np.random.SeedSequence([seed, epoch, batch_in_epoch, rank]).generate_state(1, dtype=np.uint64)[0] >> 1)


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


def training_loss(
    precond,
    net,
    images: torch.Tensor,
    text_embed: torch.Tensor,
    text_mask: torch.Tensor,
    *,
    seed: int,
    step: int,
    sample_keys: Optional[Sequence[str]],
    drop_rate: float,
    lowres: Optional[torch.Tensor] = None,
    noise_cond_aug: bool = False,
) -> torch.Tensor:
    """The mean loss of one micro batch at optimizer step `step`: each sample's draws keyed by (seed, step, its
    key in `sample_keys`). `sample_keys` None (FLOP counting, also on the meta device): batched draws from the
    global RNG instead, which cost the same model FLOPs."""
    shapes = dict(image_shape=images.shape[1:], drop_rate=drop_rate, device=images.device,
                  lowres_shape=None if lowres is None else lowres.shape[1:])
    if sample_keys is None:
        draws = batched_draws(precond, images.shape[0], **shapes)
    else:
        draws = draw_per_sample(precond, sample_keys, seed, step, **shapes)
    return diffusion_loss(precond, net, images, text_embed, text_mask, draws, lowres, noise_cond_aug)


def drop_nonfinite_gradients(loss_finite: torch.Tensor, parameters: Iterable[torch.nn.Parameter]) -> bool:
    """The numerical guard: True if the loss (`loss_finite`, a bool tensor) and every gradient are finite;
    otherwise every gradient is dropped (set to None), so the optimizer step that follows changes nothing."""
    parameters = list(parameters)
    finite = all_finite(loss_finite, parameters)
    if not finite:
        for param in parameters:
            param.grad = None
    return finite


@torch.no_grad()
def update_ema(ema: torch.nn.Module, live: torch.nn.Module, max_decay: float, step: int) -> None:
    """ema <- decay ema + (1 - decay) live with the warmed-up decay min(max_decay, (1 + step) / (10 + step)),
    so that early steps follow the live weights closely; buffers are copied."""
    decay = min(max_decay, (1 + step) / (10 + step))
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in live.parameters()], 1.0 - decay)
    for ema_buffer, buffer in zip(ema.buffers(), live.buffers()):
        ema_buffer.copy_(buffer)


@dataclass
class TrainingBatch:
    """What one training step consumes, on the device: images [B, C, H, W] in [-1, 1], text [B, L, D] with its
    mask [B, L], each sample's key, and for an SR stage its low-res input [B, C, h, w]."""

    images: torch.Tensor
    text_embed: torch.Tensor
    text_mask: torch.Tensor
    sample_keys: Optional[Sequence[str]]
    lowres: Optional[torch.Tensor] = None


def train_step(
    optimizer: torch.optim.Optimizer,
    precond,
    unet: torch.nn.Module,
    batch: TrainingBatch,
    *,
    step: int,
    seed: int,
    drop_rate: float,
    noise_cond_aug: bool = False,
    net: Optional[Callable] = None,
    ema_unet: Optional[torch.nn.Module] = None,
    ema_decay: float = 0.9999,
    grad_clip: float = 0.0,
    scaler: Optional[Any] = None,
    autocast: Optional[Callable[[], Any]] = None,
) -> Tuple[torch.Tensor, bool]:
    """One optimizer step of `unet` on one micro batch, as MegatronImagen's Lightning hooks run it: the loss
    (`training_loss`, through `net`, e.g. the compiled `unet`, under `autocast()`), backward (through the fp16
    loss `scaler` if given), the numerical guard (`drop_nonfinite_gradients`), gradient clipping to `grad_clip`
    (0: none) over the optimizer's parameters, the optimizer step, and, if the step was taken, the EMA update
    (`update_ema`) of `ema_unet`. -> (loss, whether the step was taken)."""
    with (autocast or contextlib.nullcontext)():
        loss = training_loss(
            precond, net or unet, batch.images, batch.text_embed, batch.text_mask, seed=seed, step=step,
            sample_keys=batch.sample_keys, drop_rate=drop_rate, lowres=batch.lowres, noise_cond_aug=noise_cond_aug,
        )
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    finite = drop_nonfinite_gradients(torch.isfinite(loss.detach()), unet.parameters())
    if grad_clip:
        torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if finite and ema_unet is not None:
        update_ema(ema_unet, unet, ema_decay, step)
    return loss, finite
