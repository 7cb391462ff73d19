import pytest
import torch

from nemo_imagen.diffusion import (
    DEFAULT_STEPS,
    ContinuousDDPM,
    DDPMConfig,
    EDMConfig,
    EDMPreconditioning,
    karras_sigmas,
    sampling_sigmas,
)


@pytest.mark.parametrize("n, sigma_min, sigma_max, rho", [(5, 0.002, 80.0, 7.0), (18, 0.01, 20.0, 3.0)])
def test_karras_sigmas_match_the_closed_form(n, sigma_min, sigma_max, rho):
    sigmas = karras_sigmas(n, sigma_min, sigma_max, rho)
    assert sigmas.dtype == torch.float64 and sigmas.shape == (n + 1,)
    expected = [
        (sigma_max ** (1 / rho) + i / (n - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
        for i in range(n)
    ]
    assert sigmas[:-1].tolist() == pytest.approx(expected, rel=1e-12)
    assert sigmas[0].item() == pytest.approx(sigma_max, rel=1e-12)
    assert sigmas[-2].item() == pytest.approx(sigma_min, rel=1e-12)
    assert sigmas[-1].item() == 0.0


def test_karras_sigmas_single_step_and_invalid_count():
    assert karras_sigmas(1, 0.002, 80.0).tolist() == [80.0, 0.0]
    with pytest.raises(ValueError, match="^n:"):
        karras_sigmas(0, 0.002, 80.0)


def test_sampling_sigmas_per_preconditioning_and_sampler():
    edm = EDMPreconditioning(EDMConfig(sigma_min=0.01, sigma_max=50.0, rho=5.0))
    for sampler in ("edm", "ddpm", "dpmpp"):
        assert torch.equal(sampling_sigmas(edm, sampler, 12), karras_sigmas(12, 0.01, 50.0, 5.0))
    assert sampling_sigmas(edm, "edm").shape == (DEFAULT_STEPS + 1,)

    ddpm = ContinuousDDPM(DDPMConfig(timesteps=250))
    assert torch.equal(sampling_sigmas(ddpm, "ddpm"), ddpm.sigmas(250))
    assert torch.equal(sampling_sigmas(ddpm, "dpmpp", 20), ddpm.sigmas(20))
    assert sampling_sigmas(ddpm, "dpmpp").shape == (DEFAULT_STEPS + 1,)
    # Heun on a DDPM model: Karras steps over the model's range, capped at sigma 80
    assert torch.equal(sampling_sigmas(ddpm, "edm", 30), karras_sigmas(30, ddpm.sigma_min, 80.0, 7.0))
    with pytest.raises(ValueError, match="^sampler: 'euler' is not one of edm, ddpm, dpmpp"):
        sampling_sigmas(edm, "euler", 10)
