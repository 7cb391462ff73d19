import math

import pytest
import torch

from nemo_imagen.diffusion import (
    LOG_SNR_MIN,
    ContinuousDDPM,
    DDPMConfig,
    alpha_sigma_from_log_snr,
    cosine_log_snr,
    linear_log_snr,
)

TIMES = [0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99]


class Recorder:
    def __init__(self, fn):
        self.fn = fn
        self.calls = []

    def __call__(self, z, noise_cond, **cond):
        self.calls.append((z, noise_cond, cond))
        return self.fn(z, noise_cond)


def test_cosine_log_snr_is_the_log_odds_of_cos_squared():
    t = torch.tensor(TIMES, dtype=torch.float64)
    log_snr = cosine_log_snr(t)
    for i, ti in enumerate(TIMES):
        alpha_bar = math.cos((ti + 0.008) / 1.008 * math.pi / 2) ** 2
        assert log_snr[i].item() == pytest.approx(math.log(alpha_bar / (1 - alpha_bar)), rel=1e-9, abs=1e-9)
        assert torch.sigmoid(log_snr[i]).item() == pytest.approx(alpha_bar, rel=1e-9)
    # t = 1 is pure noise (alpha_bar = 0): clamped to the documented finite floor, in float32 too
    assert cosine_log_snr(torch.tensor([1.0])).item() == LOG_SNR_MIN
    assert cosine_log_snr(torch.tensor([1.0], dtype=torch.float64)).item() == LOG_SNR_MIN
    assert torch.all(torch.diff(cosine_log_snr(torch.linspace(0, 1, 101))) < 0)


def test_linear_log_snr_matches_its_formula_and_the_discrete_betas():
    t = torch.tensor(TIMES + [1.0], dtype=torch.float64)
    log_snr = linear_log_snr(t)
    for i, ti in enumerate(TIMES + [1.0]):
        assert log_snr[i].item() == pytest.approx(-math.log(math.expm1(1e-4 + 10 * ti**2)), rel=1e-12)
    # Ho et al.'s discrete schedule: betas linear 1e-4 .. 0.02 over 1000 steps, alpha_bar_k = prod(1 - beta).
    # Step k (1-based) sits at t = (k - 1) / 1000. The continuous form drops the 0.1 t term of
    # 1000 * integral(beta), so -log(alpha_bar) agrees to 0.14 (out of 0 .. 10.1), not exactly.
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    neg_log_alpha_bar = -torch.log(torch.cumprod(1 - betas, 0))
    t_k = torch.arange(1000, dtype=torch.float64) / 1000
    continuous = -torch.log(torch.sigmoid(linear_log_snr(t_k)))
    assert (continuous - neg_log_alpha_bar).abs().max().item() < 0.14
    assert continuous[0].item() == pytest.approx(neg_log_alpha_bar[0].item(), rel=1e-3)


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_alpha_and_sigma_are_variance_preserving(schedule):
    precond = ContinuousDDPM(DDPMConfig(noise_schedule=schedule))
    log_snr = precond.log_snr(torch.linspace(0, 1, 21, dtype=torch.float64))
    alpha, sigma_t = alpha_sigma_from_log_snr(log_snr)
    assert torch.allclose(alpha**2 + sigma_t**2, torch.ones_like(alpha), rtol=0, atol=1e-14)
    assert torch.allclose(alpha**2 / sigma_t**2, log_snr.exp(), rtol=1e-10)


def test_sigma_range_and_time_grid():
    cosine = ContinuousDDPM(DDPMConfig(noise_schedule="cosine"))
    linear = ContinuousDDPM(DDPMConfig(noise_schedule="linear"))
    # cosine: sigma_min = cot(pi/2 * 1/1.008) = 1/sqrt(snr(0)); sigma_max from the clamp, exp(10)
    assert cosine.sigma_min == pytest.approx(1 / math.tan(math.pi / 2 / 1.008), rel=1e-12)
    assert cosine.sigma_max == pytest.approx(math.exp(-LOG_SNR_MIN / 2), rel=1e-12)
    assert linear.sigma_min == pytest.approx(math.sqrt(math.expm1(1e-4)), rel=1e-9)
    assert linear.sigma_max == pytest.approx(math.sqrt(math.expm1(1e-4 + 10)), rel=1e-9)
    sigmas = linear.sigmas(4)
    expected = [math.sqrt(math.expm1(1e-4 + 10 * t**2)) for t in (1.0, 0.75, 0.5, 0.25)] + [0.0]
    assert sigmas.tolist() == pytest.approx(expected, rel=1e-12)


def _oracle(precond, x0, objective):
    """The ideal network: eps = (z - alpha x0) / sigma_t from its own inputs, or x0 itself."""

    def fn(z, log_snr):
        alpha = torch.sqrt(1 / (1 + torch.exp(-log_snr)))[:, None, None, None]
        sigma_t = torch.sqrt(1 / (1 + torch.exp(log_snr)))[:, None, None, None]
        return (z - alpha * x0) / sigma_t if objective == "noise" else x0.clone()

    return Recorder(fn)


@pytest.mark.parametrize("objective", ["noise", "x_start"])
def test_denoise_with_the_oracle_recovers_x0(objective):
    precond = ContinuousDDPM(DDPMConfig(pred_objective=objective))
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3, 5, 5, generator=g, dtype=torch.float64) * 2 - 1
    sigma = torch.tensor([0.02, 0.7, 5.0, 300.0], dtype=torch.float64)
    x = x0 + sigma[:, None, None, None] * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    net = _oracle(precond, x0, objective)
    x0_hat = precond.denoise(net, x, sigma, text_mask="kept")
    assert torch.allclose(x0_hat, x0, rtol=0, atol=1e-9)
    z, log_snr, cond = net.calls[0]
    assert cond == {"text_mask": "kept"}
    assert torch.allclose(log_snr, -2 * sigma.log(), rtol=1e-12)
    assert torch.allclose(z, x / (1 + sigma**2).sqrt()[:, None, None, None], rtol=1e-12)
    # an eps prediction off by 0.1 moves x0_hat by sigma * 0.1 (the VE relation x0 = x - sigma eps)
    if objective == "noise":
        off = Recorder(lambda z, c: net.fn(z, c) + 0.1)
        assert torch.allclose(precond.denoise(off, x, sigma) - x0, -0.1 * sigma[:, None, None, None].expand_as(x0))


@pytest.mark.parametrize("objective", ["noise", "x_start"])
@pytest.mark.parametrize("loss_type", ["l1", "l2", "huber"])
def test_loss_of_the_oracle_is_zero(objective, loss_type):
    precond = ContinuousDDPM(DDPMConfig(pred_objective=objective, loss_type=loss_type))
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(8, 3, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    loss = precond.loss(_oracle(precond, x0, objective), x0, generator=g)
    assert loss.shape == (8,)
    assert loss.abs().max().item() < 1e-10


@pytest.mark.parametrize("loss_type", ["l1", "l2", "huber"])
def test_x_start_loss_values_by_hand(loss_type):
    precond = ContinuousDDPM(DDPMConfig(pred_objective="x_start", loss_type=loss_type))
    x0 = torch.tensor([[0.5, -2.0, 1.5, 0.0], [3.0, -0.25, 0.75, -1.0]], dtype=torch.float64).reshape(2, 1, 2, 2)
    loss = precond.loss(Recorder(lambda z, c: torch.zeros_like(z)), x0, generator=torch.Generator().manual_seed(2))
    by_hand = {
        "l2": [(0.25 + 4 + 2.25 + 0) / 4, (9 + 0.0625 + 0.5625 + 1) / 4],
        "l1": [(0.5 + 2 + 1.5 + 0) / 4, (3 + 0.25 + 0.75 + 1) / 4],
        "huber": [(0.125 + 1.5 + 1.0 + 0) / 4, (2.5 + 0.03125 + 0.28125 + 0.5) / 4],
    }[loss_type]
    assert loss.tolist() == pytest.approx(by_hand, rel=1e-12)


def test_training_times_are_uniform_and_noise_is_standard():
    """The loss draws t ~ U(0, 1) (recovered from the log-SNR the network sees by inverting the cosine
    schedule; Kolmogorov-Smirnov against U(0, 1)) and z = alpha x0 + sigma_t eps with eps ~ N(0, 1)
    (mean and std within 5 standard errors)."""
    stats = pytest.importorskip("scipy.stats")
    N = 20000
    precond = ContinuousDDPM(DDPMConfig(noise_schedule="cosine"))
    x0 = torch.full((N, 1, 1, 1), -0.4, dtype=torch.float64)
    net = Recorder(lambda z, c: torch.zeros_like(z))
    precond.loss(net, x0, generator=torch.Generator().manual_seed(3))
    z, log_snr, _ = net.calls[0]
    assert log_snr.dtype == torch.float32
    t = 1 - 1.008 * 2 / math.pi * torch.atan(torch.exp(log_snr.double() / 2))
    assert stats.kstest(t.numpy(), "uniform").pvalue > 1e-3
    alpha, sigma_t = alpha_sigma_from_log_snr(log_snr.double())
    eps = (z.flatten() + 0.4 * alpha) / sigma_t
    assert abs(eps.mean().item()) < 5 / math.sqrt(N)
    assert abs(eps.std().item() - 1) < 5 / math.sqrt(2 * N)
