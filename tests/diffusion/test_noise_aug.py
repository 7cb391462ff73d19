import math

import pytest
import torch

from nemo_imagen.diffusion import (
    ContinuousDDPM,
    DDPMConfig,
    EDMConfig,
    EDMPreconditioning,
    augment_lowres,
    lowres_inputs,
    sampling_augmentation_sigma,
    training_augmentation_sigma,
)


def test_edm_augmentation_is_c_in_times_the_noisy_image_and_conditions_on_c_noise():
    precond = EDMPreconditioning(EDMConfig(sigma_data=0.5))
    lowres = torch.rand(3, 3, 8, 8, dtype=torch.float64) * 2 - 1
    sigma = torch.tensor([0.002, 0.3, 5.0], dtype=torch.float64)
    lowres_in, cond = augment_lowres(precond, lowres, sigma, torch.Generator().manual_seed(0))
    noise = torch.randn(lowres.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for i, s in enumerate(sigma.tolist()):
        expected = (lowres[i] + s * noise[i]) / math.sqrt(s**2 + 0.25)
        torch.testing.assert_close(lowres_in[i], expected, rtol=1e-12, atol=1e-12)
        assert cond[i].item() == pytest.approx(math.log(s) / 4, rel=1e-12)


def test_lowres_inputs_pass_the_image_unchanged_without_augmentation_and_augment_it_with():
    precond = EDMPreconditioning(EDMConfig(sigma_data=0.5))
    lowres = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    plain = lowres_inputs(precond, lowres, noise_cond_aug=False)
    assert plain["lowres"] is lowres and plain["lowres_noise_cond"] is None
    sigma, noise = torch.tensor([0.1, 2.0], dtype=torch.float64), torch.randn(lowres.shape, dtype=torch.float64)
    augmented = lowres_inputs(precond, lowres, True, sigma, noise=noise)
    expected = (lowres + sigma[:, None, None, None] * noise) / (sigma**2 + 0.25).sqrt()[:, None, None, None]
    torch.testing.assert_close(augmented["lowres"], expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(augmented["lowres_noise_cond"], sigma.log() / 4)


def test_ddpm_augmentation_is_the_variance_preserving_forward_process():
    """z = alpha x0 + sigma_t eps with alpha^2 = sigmoid(logsnr): for x0 = 0.6 everywhere the mean is
    0.6 alpha and the standard deviation sigma_t (closed forms, 200k pixels)."""
    precond = ContinuousDDPM(DDPMConfig(noise_schedule="cosine"))
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    sigma = precond.sigma(t)
    lowres = torch.full((3, 2, 100, 1000), 0.6, dtype=torch.float64)
    z, cond = augment_lowres(precond, lowres, sigma, torch.Generator().manual_seed(1))
    for i, ti in enumerate(t.tolist()):
        alpha_bar = math.cos((ti + 0.008) / 1.008 * math.pi / 2) ** 2
        assert cond[i].item() == pytest.approx(math.log(alpha_bar / (1 - alpha_bar)), rel=1e-9)
        assert z[i].mean().item() == pytest.approx(0.6 * math.sqrt(alpha_bar), abs=5 * math.sqrt(1 - alpha_bar) / 450)
        assert z[i].std().item() == pytest.approx(math.sqrt(1 - alpha_bar), rel=0.01)


def test_training_levels_follow_each_preconditionings_training_distribution():
    n = 100_000
    edm = EDMPreconditioning(EDMConfig(p_mean=-1.2, p_std=1.2))
    ln_sigma = training_augmentation_sigma(edm, n, generator=torch.Generator().manual_seed(2)).log()
    assert ln_sigma.mean().item() == pytest.approx(-1.2, abs=5 * 1.2 / math.sqrt(n))
    assert ln_sigma.std().item() == pytest.approx(1.2, rel=0.01)

    ddpm = ContinuousDDPM(DDPMConfig(noise_schedule="cosine"))
    sigma = training_augmentation_sigma(ddpm, n, generator=torch.Generator().manual_seed(3)).double()
    # invert the cosine schedule: logsnr = 2 ln tan(pi/2 (1 - t) / 1.008)  =>  t = 1 - 1.008 (2/pi) atan(e^{logsnr/2})
    log_snr = -2 * sigma.log()
    t = 1 - 1.008 * (2 / math.pi) * torch.atan(torch.exp(log_snr / 2))
    t = t[log_snr > -19.9]  # the clamp at LOG_SNR_MIN folds t > 0.9949 onto one level
    ks = (torch.sort(t).values - (torch.arange(1, t.numel() + 1, dtype=torch.float64) / n)).abs().max()
    assert ks.item() < 1.63 / math.sqrt(n)  # Kolmogorov-Smirnov at the 1% level against U(0, 1)


def test_sampling_level_defaults_to_the_smallest_sigma_and_rejects_zero():
    edm = EDMPreconditioning(EDMConfig())
    assert sampling_augmentation_sigma(edm, 2).tolist() == pytest.approx([0.002, 0.002])
    ddpm = ContinuousDDPM(DDPMConfig(noise_schedule="linear"))
    expected = math.exp(math.log(math.expm1(1e-4)) / 2)  # sigma at t = 0: exp(-logsnr(0) / 2)
    assert sampling_augmentation_sigma(ddpm, 1).item() == pytest.approx(expected, rel=1e-5)
    assert sampling_augmentation_sigma(ddpm, 1, sigma=0.3).item() == pytest.approx(0.3)
    with pytest.raises(ValueError, match="noise_cond_aug_sigma"):
        sampling_augmentation_sigma(edm, 1, sigma=0.0)
    with pytest.raises(ValueError, match="noise_cond_aug"):
        augment_lowres(edm, torch.zeros(1, 3, 4, 4), torch.zeros(1))
