"""One stage's sampling procedure over (preconditioning, network): text and low-res conditioning, classifier-free
guidance as one batch, thresholding, the sigma grid and the sampler, under an optional autocast."""
from typing import Callable, Dict, Optional, Sequence

import torch

from .guidance import classifier_free_guidance, threshold_denoiser
from .samplers import SAMPLERS, sampling_sigmas


@torch.no_grad()
def sample_images(
    precond,
    net: Callable,
    shape: Sequence[int],
    text_embed: torch.Tensor,
    text_mask: torch.Tensor,
    *,
    lowres_cond: Optional[Dict[str, torch.Tensor]] = None,
    sampler: str = "edm",
    steps: Optional[int] = None,
    guidance_scale: float = 4.0,
    thresholding: str = "dynamic",
    generator: Optional[torch.Generator] = None,
    callback: Optional[Callable] = None,
    autocast_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """shape: [B, C, H, W]; text_embed: [B, L, D], text_mask: [B, L] on the device of the result;
    lowres_cond: the UNet's low-res keyword arguments of a super-resolution stage ([B, ...] tensors, see
    `lowres_inputs`). -> images [B, C, H, W] in [-1, 1].

    The denoiser is `precond.denoise(net, ...)`; with guidance the conditional and unconditional halves run
    as one batch of 2B (text and low-res inputs repeated). `autocast_dtype` (e.g. torch.bfloat16) runs the
    network under autocast on the text's device; None runs it as it is.
    """
    batch_size, device = shape[0], text_embed.device
    lowres_cond = lowres_cond or {}

    def denoise(x, sigma, drop_text):
        repeat = x.shape[0] // batch_size  # 2 when guidance batches the conditional and unconditional halves
        tiled = {key: _tile(value, repeat) for key, value in lowres_cond.items()}
        return precond.denoise(
            net,
            x,
            sigma,
            text_embed=text_embed.repeat(repeat, 1, 1),
            text_mask=text_mask.repeat(repeat, 1),
            drop_text=drop_text,
            **tiled,
        )

    sigmas = sampling_sigmas(precond, sampler, steps).to(device)  # raises on an unknown sampler
    denoiser = threshold_denoiser(classifier_free_guidance(denoise, guidance_scale), thresholding)
    noise = torch.randn(tuple(shape), generator=generator, device=device)
    x = noise * sigmas[0].to(noise.dtype)
    with torch.autocast(device.type, autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        images = SAMPLERS[sampler](denoiser, x, sigmas, generator=generator, callback=callback)
    return images.clamp(-1, 1)


def _tile(tensor: Optional[torch.Tensor], repeat: int) -> Optional[torch.Tensor]:
    """[B, ...] -> [repeat * B, ...], the whole batch repeated (None stays None)."""
    return None if tensor is None else tensor.repeat(repeat, *[1] * (tensor.ndim - 1))
