"""diffusion/sampling.py: a stage's sampling procedure, against the closed-form flow of Gaussian data.

For data x0 ~ N(0, s^2 I) the exact denoiser is D(x, sigma) = x s^2 / (s^2 + sigma^2), and the probability-flow
ODE dx/dsigma = (x - D) / sigma carries x(sigma_max) to x(0) = x(sigma_max) s / sqrt(s^2 + sigma_max^2)."""
import math

import pytest
import torch

from nemo_imagen.diffusion import karras_sigmas, sample_images

DATA_STD = 0.5
SIGMA_MAX = 80.0


class GaussianPrecond:
    """A stand-in preconditioning whose denoiser is the exact one of N(0, DATA_STD^2) data; it records what the
    network was given."""

    def __init__(self):
        self.calls = []

    def sigmas(self, steps):
        return karras_sigmas(steps, 0.002, SIGMA_MAX, 7.0)

    def denoise(self, net, x, sigma, *, text_embed, text_mask, drop_text, **lowres):
        self.calls.append({"batch": x.shape[0], "text_embed": text_embed, "text_mask": text_mask,
                           "drop_text": drop_text.clone(), "lowres": lowres})
        return net(x, sigma)


def exact_denoiser(x, sigma):
    variance = sigma.double().view(-1, 1, 1, 1) ** 2
    return (x.double() * DATA_STD**2 / (DATA_STD**2 + variance)).to(x.dtype)


def closed_form(shape, seed):
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32).double()
    return noise * SIGMA_MAX * DATA_STD / math.sqrt(DATA_STD**2 + SIGMA_MAX**2)


# both are second order: 64 steps are 0.4% off the flow, 256 steps 0.02%, 1024 steps 0.0006%
@pytest.mark.parametrize("sampler, steps, tolerance", [("edm", 512, 1e-4), ("dpmpp", 512, 1e-4)])
def test_deterministic_samplers_follow_the_closed_form_flow(sampler, steps, tolerance):
    shape = (3, 2, 4, 4)
    text = torch.zeros(3, 5, 8), torch.ones(3, 5, dtype=torch.bool)
    images = sample_images(GaussianPrecond(), exact_denoiser, shape, *text, sampler=sampler, steps=steps,
                           guidance_scale=1.0, thresholding="none", generator=torch.Generator().manual_seed(7))
    expected = closed_form(shape, 7)
    assert images.dtype == torch.float32
    assert torch.allclose(images.double(), expected.clamp(-1, 1), atol=tolerance, rtol=0)


def test_guidance_runs_both_halves_as_one_batch_with_the_text_and_lowres_tiled():
    precond = GaussianPrecond()
    embed, mask = torch.randn(2, 5, 8), torch.rand(2, 5) > 0.5
    lowres = {"lowres": torch.randn(2, 3, 4, 4), "lowres_noise_cond": torch.rand(2)}
    sample_images(precond, exact_denoiser, (2, 3, 8, 8), embed, mask, lowres_cond=lowres, sampler="ddpm", steps=3,
                  guidance_scale=3.0, thresholding="none", generator=torch.Generator().manual_seed(0))
    assert len(precond.calls) == 3  # one network call a step, both halves together
    for call in precond.calls:
        assert call["batch"] == 4
        assert call["drop_text"].tolist() == [False, False, True, True]
        assert torch.equal(call["text_embed"], torch.cat([embed, embed]))
        assert torch.equal(call["text_mask"], torch.cat([mask, mask]))
        assert torch.equal(call["lowres"]["lowres"], torch.cat([lowres["lowres"]] * 2))
        assert torch.equal(call["lowres"]["lowres_noise_cond"], torch.cat([lowres["lowres_noise_cond"]] * 2))


def test_guidance_scale_moves_the_result_along_cond_minus_uncond():
    """With D_cond = D + a and D_uncond = D, one DDPM step to sigma = 0 returns D + w a."""
    shift = 0.1

    class Shifted(GaussianPrecond):
        def denoise(self, net, x, sigma, *, drop_text, **kwargs):
            return net(x, sigma) + shift * (~drop_text).to(x.dtype).view(-1, 1, 1, 1)

    text = torch.zeros(1, 2, 4), torch.ones(1, 2, dtype=torch.bool)
    results = {}
    for scale in (1.0, 3.0):
        precond = Shifted()
        precond.sigmas = lambda steps: torch.tensor([2.0, 0.0], dtype=torch.float64)
        results[scale] = sample_images(precond, exact_denoiser, (1, 1, 2, 2), *text, sampler="ddpm", steps=1,
                                       guidance_scale=scale, thresholding="none",
                                       generator=torch.Generator().manual_seed(3))
    noise = torch.randn((1, 1, 2, 2), generator=torch.Generator().manual_seed(3)) * 2.0
    base = noise * DATA_STD**2 / (DATA_STD**2 + 4.0)
    assert torch.allclose(results[1.0], (base + shift).clamp(-1, 1), atol=1e-6)
    assert torch.allclose(results[3.0], (base + 3 * shift).clamp(-1, 1), atol=1e-6)


def test_an_unknown_sampler_is_named():
    text = torch.zeros(1, 2, 4), torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="sampler: 'euler' is not one of edm, ddpm, dpmpp"):
        sample_images(GaussianPrecond(), exact_denoiser, (1, 1, 2, 2), *text, sampler="euler")
