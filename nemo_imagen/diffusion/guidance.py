"""Classifier-free guidance (Ho & Salimans 2022) and x0 thresholding (Imagen, Saharia et al. 2022)."""
import torch

from .utils import append_dims


def classifier_free_guidance(denoise_fn, guidance_scale: float):
    """Guided denoiser D(x, sigma) = uncond + guidance_scale (cond - uncond).

    denoise_fn(x: [B', ...], sigma: [B'], drop_text: [B'] bool) -> x0_hat: [B', ...]. With guidance_scale != 1
    it is called once on the batch [x; x] (B' = 2B) with drop_text = [False] * B + [True] * B: rows
    i and B + i are the same sample, so per-sample conditioning of batch B is tiled, e.g.
        lambda x, sigma, drop_text: precond.denoise(unet, x, sigma, drop_text=drop_text,
            text_embed=text_embed.repeat(x.shape[0] // B, 1, 1), text_mask=text_mask.repeat(x.shape[0] // B, 1))
    guidance_scale = 1 is the conditional model alone: one call on x with drop_text all False.
    """

    def guided(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        if guidance_scale == 1:
            return denoise_fn(x, sigma, torch.zeros(B, dtype=torch.bool, device=x.device))
        drop_text = torch.arange(2 * B, device=x.device) >= B
        x0 = denoise_fn(torch.cat([x, x]), torch.cat([sigma, sigma]), drop_text)
        cond, uncond = x0[:B], x0[B:]
        return uncond + guidance_scale * (cond - uncond)

    return guided


def static_threshold(x0: torch.Tensor) -> torch.Tensor:
    """Clamp x0: [B, ...] to [-1, 1]."""
    return x0.clamp(-1.0, 1.0)


def dynamic_threshold(x0: torch.Tensor, percentile: float = 0.995) -> torch.Tensor:
    """Imagen's dynamic thresholding: s = max(1, quantile(|x0|, percentile)) per sample, then
    clip(x0, -s, s) / s. x0: [B, ...] -> [B, ...].

    The quantile interpolates linearly between order statistics (as torch.quantile and numpy's default),
    computed with kthvalue, which has no input-size limit and is exact for any image size.
    """
    if not 0.0 <= percentile <= 1.0:
        raise ValueError(f"percentile: must be in [0, 1], got {percentile!r}")
    a = x0.flatten(1).abs().to(torch.promote_types(x0.dtype, torch.float32))
    n = a.shape[1]
    position = percentile * (n - 1)
    lower = int(position)
    upper = min(lower + 1, n - 1)
    q_lower = a.kthvalue(lower + 1, dim=1).values
    q_upper = a.kthvalue(upper + 1, dim=1).values
    s = (q_lower + (position - lower) * (q_upper - q_lower)).clamp(min=1.0)
    s = append_dims(s, x0.ndim).to(x0.dtype)
    return torch.maximum(torch.minimum(x0, s), -s) / s


THRESHOLDS = ("dynamic", "static", "none")


def threshold_denoiser(denoiser, method: str, percentile: float = 0.995):
    """Wrap a denoiser D(x, sigma) -> x0_hat so that its x0_hat is thresholded.

    method: `dynamic` (`dynamic_threshold` at `percentile`), `static` (clamp to [-1, 1]) or `none`
    (returns `denoiser` itself). Apply it outside guidance: threshold the guided x0.
    """
    if method not in THRESHOLDS:
        raise ValueError(f"thresholding: {method!r} is not one of {', '.join(THRESHOLDS)}")
    if method == "none":
        return denoiser
    if method == "static":
        return lambda x, sigma: static_threshold(denoiser(x, sigma))
    return lambda x, sigma: dynamic_threshold(denoiser(x, sigma), percentile)
