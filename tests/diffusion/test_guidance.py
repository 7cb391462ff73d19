import math

import pytest
import torch

from nemo_imagen.diffusion import (
    classifier_free_guidance,
    dynamic_threshold,
    sample_drop_mask,
    static_threshold,
    threshold_denoiser,
)


class FakeDenoise:
    """denoise_fn(x, sigma, drop_text): cond = x sigma + 3, uncond = x sigma - 1; records its calls."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, sigma, drop_text):
        self.calls.append((x.clone(), sigma.clone(), drop_text.clone()))
        return x * sigma[:, None] + torch.where(drop_text, -1.0, 3.0)[:, None]


def test_guidance_is_uncond_plus_scale_times_difference_in_one_batched_call():
    B = 3
    x = torch.tensor([[1.0, 2.0], [-1.0, 0.5], [0.0, 4.0]])
    sigma = torch.tensor([0.5, 2.0, 10.0])
    fake = FakeDenoise()
    out = classifier_free_guidance(fake, guidance_scale=4.0)(x, sigma)
    # uncond + 4 (cond - uncond) = (x sigma - 1) + 4 * 4
    assert torch.allclose(out, x * sigma[:, None] + 15.0)
    assert len(fake.calls) == 1
    x_in, sigma_in, drop_in = fake.calls[0]
    assert torch.equal(x_in, torch.cat([x, x]))
    assert torch.equal(sigma_in, torch.cat([sigma, sigma]))
    assert drop_in.tolist() == [False] * B + [True] * B


def test_guidance_scale_one_runs_only_the_conditional_half():
    fake = FakeDenoise()
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    out = classifier_free_guidance(fake, guidance_scale=1.0)(x, torch.tensor([1.0, 1.0]))
    assert torch.allclose(out, x + 3.0)
    assert len(fake.calls) == 1 and fake.calls[0][2].tolist() == [False, False]


def test_guidance_scale_zero_is_the_unconditional_model():
    out = classifier_free_guidance(FakeDenoise(), guidance_scale=0.0)(torch.ones(2, 2), torch.ones(2))
    assert torch.allclose(out, torch.zeros(2, 2))


@pytest.mark.parametrize("drop_rate", [0.1, 0.5])
def test_drop_mask_rate_is_within_binomial_bounds(drop_rate):
    n = 100_000
    mask = sample_drop_mask(n, drop_rate, generator=torch.Generator().manual_seed(0))
    assert mask.dtype == torch.bool and mask.shape == (n,)
    assert abs(mask.sum().item() - n * drop_rate) < 5 * math.sqrt(n * drop_rate * (1 - drop_rate))


def test_drop_mask_edges_and_validation():
    assert not sample_drop_mask(1000, 0.0).any()
    assert sample_drop_mask(1000, 1.0).all()
    with pytest.raises(ValueError, match="^drop_rate:"):
        sample_drop_mask(4, 1.5)


def test_dynamic_threshold_by_hand():
    # sample 0: |x| sorted = [0.5, 1, 2, 4]; the 0.5 quantile sits at position 1.5 -> s = 1.5
    # sample 1: every |x| < 1, so s = max(1, .) = 1 and nothing changes
    x0 = torch.tensor([[0.5, -2.0, 4.0, 1.0], [0.1, -0.2, 0.3, 0.4]]).reshape(2, 1, 2, 2)
    out = dynamic_threshold(x0, percentile=0.5)
    expected = torch.tensor([[0.5 / 1.5, -1.0, 1.0, 1.0 / 1.5], [0.1, -0.2, 0.3, 0.4]]).reshape(2, 1, 2, 2)
    assert torch.allclose(out, expected)


@pytest.mark.parametrize("percentile", [0.9, 0.995, 1.0])
def test_dynamic_threshold_matches_torch_quantile(percentile):
    scales = torch.tensor([0.3, 1.5, 4.0])[:, None, None, None]  # s = 1 (no-op), s slightly > 1, s >> 1
    x0 = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * scales
    s = torch.quantile(x0.abs().flatten(1), percentile, dim=1).clamp(min=1.0)[:, None, None, None]
    assert torch.allclose(dynamic_threshold(x0, percentile), torch.maximum(torch.minimum(x0, s), -s) / s)
    assert dynamic_threshold(x0, percentile).abs().max() <= 1.0


def test_static_threshold_and_wrapping_a_denoiser():
    x0 = torch.tensor([[-3.0, -0.5, 0.25, 2.0]])
    assert static_threshold(x0).tolist() == [[-1.0, -0.5, 0.25, 1.0]]

    def denoiser(x, sigma):
        return x * sigma[:, None]

    x, sigma = torch.tensor([[0.5, -2.0, 4.0, 1.0]]), torch.tensor([2.0])
    assert torch.equal(threshold_denoiser(denoiser, "static")(x, sigma), static_threshold(denoiser(x, sigma)))
    assert torch.equal(threshold_denoiser(denoiser, "dynamic", 0.5)(x, sigma),
                       dynamic_threshold(denoiser(x, sigma), 0.5))
    assert threshold_denoiser(denoiser, "none") is denoiser
    with pytest.raises(ValueError, match="^thresholding: 'clip' is not one of dynamic, static, none"):
        threshold_denoiser(denoiser, "clip")
