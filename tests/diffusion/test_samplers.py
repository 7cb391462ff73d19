"""Samplers on a 2-D Gaussian toy whose ideal denoiser is known in closed form.

Data x0 ~ N(mu, Sigma); at noise level s, x = x0 + s n ~ N(mu, Sigma + s^2 I) and
E[x0 | x] = mu + Sigma (Sigma + s^2 I)^-1 (x - mu). With that denoiser every sampler should
return samples from N(mu, Sigma) up to its discretisation error.
"""
import math

import pytest
import torch

from nemo_imagen.diffusion import (
    ContinuousDDPM,
    DDPMConfig,
    EDMConfig,
    EDMPreconditioning,
    karras_sigmas,
    sample_ddpm_ancestral,
    sample_dpmpp_2m,
    sample_heun,
    sampling_sigmas,
    SAMPLERS,
)

MU = torch.tensor([0.5, -0.3], dtype=torch.float64)
SIGMA = torch.tensor([[1.0, 0.6], [0.6, 0.5]], dtype=torch.float64)  # eigenvalues 0.1 and 1.4
N = 100_000


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The toy tensors are tiny; one thread avoids oversubscription on small shared machines."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def ideal_denoiser(x, sigma):
    """E[x0 | x] for x0 ~ N(MU, SIGMA): x: [B, 2], sigma: [B] (one level per call, as samplers pass)."""
    s = sigma[0].item()
    assert torch.all(sigma == sigma[0])
    A = SIGMA @ torch.linalg.inv(SIGMA + s**2 * torch.eye(2, dtype=torch.float64))
    mu = MU.to(x.dtype)
    return mu + (x - mu) @ A.T.to(x.dtype)


def exact_flow(x_T, sigma_T):
    """The probability-flow ODE's exact solution from sigma_T to 0: per eigen-direction of SIGMA,
    x0 - mu = sqrt(l / (l + sigma_T^2)) (x_T - mu)."""
    l, U = torch.linalg.eigh(SIGMA)
    M = U @ torch.diag((l / (l + sigma_T**2)).sqrt()) @ U.T
    return MU + (x_T - MU) @ M.T


def start_noise(sigma_max, generator, n=N):
    """x_T from the exact marginal N(MU, SIGMA + sigma_max^2 I), so that the test measures the sampler
    alone (randn * sigma_max would add a mean error of about 0.015 |mu| at sigma_max = 80)."""
    L = torch.linalg.cholesky(SIGMA + sigma_max**2 * torch.eye(2, dtype=torch.float64))
    return (MU + torch.randn(n, 2, generator=generator, dtype=torch.float64) @ L.T).float()


EDM = EDMPreconditioning(EDMConfig())
DDPM = ContinuousDDPM(DDPMConfig())
CASES = {
    "heun": (sample_heun, EDM.sigmas(100), {}),
    "heun_churn": (sample_heun, EDM.sigmas(100), dict(S_churn=10.0, S_tmin=0.05, S_tmax=50.0, S_noise=1.0)),
    "heun_on_ddpm": (sample_heun, sampling_sigmas(DDPM, "edm", 100), {}),
    "ddpm_ancestral": (sample_ddpm_ancestral, sampling_sigmas(DDPM, "ddpm"), {}),  # 1000 steps
    "dpmpp_2m": (sample_dpmpp_2m, EDM.sigmas(64), {}),
    "dpmpp_2m_on_ddpm": (sample_dpmpp_2m, DDPM.sigmas(50), {}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_sampler_reproduces_the_gaussian(case):
    """Sample mean and covariance of N = 1e5 samples vs MU and SIGMA.

    Tolerance per entry = 5 standard errors (mean_i: sqrt(S_ii / N) <= 0.0032; cov_ij:
    sqrt((S_ii S_jj + S_ij^2) / N) <= 0.0045) + a discretisation allowance (mean 0.002, cov 0.01).
    The allowance bounds the samplers' bias at these step counts, measured with 1e6 samples: at most
    0.008 (Heun with churn at 100 steps; the rest <= 0.005). The ancestral sampler's bias is O(1/steps)
    (it ignores the x0 posterior's variance: -0.045 at 100 steps), hence its own default, 1000 steps.
    """
    sampler, sigmas, options = CASES[case]
    g = torch.Generator().manual_seed(0)
    x = start_noise(sigmas[0].item(), g)
    out = sampler(ideal_denoiser, x, sigmas, generator=g, **options).double()
    assert out.dtype == torch.float64 and torch.isfinite(out).all()
    mean, cov = out.mean(0), torch.cov(out.T)
    d = SIGMA.diagonal()
    mean_tol = 5 * (d / N).sqrt() + 0.002
    cov_tol = 5 * ((d[:, None] * d[None, :] + SIGMA**2) / N).sqrt() + 0.01
    assert torch.all((mean - MU).abs() < mean_tol), (mean, MU)
    assert torch.all((cov - SIGMA).abs() < cov_tol), (cov, SIGMA)


@pytest.mark.parametrize("sampler", [sample_heun, sample_dpmpp_2m])
def test_deterministic_samplers_converge_at_second_order(sampler):
    """Against the exact ODE solution, doubling the steps divides the error by ~4 (Euler: ~2)."""
    x_T = torch.randn(1000, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 80
    reference = exact_flow(x_T, 80.0)
    errors = [(sampler(ideal_denoiser, x_T, karras_sigmas(n, 0.002, 80.0)) - reference).abs().max().item()
              for n in (32, 64)]
    assert errors[1] < 0.02
    assert errors[0] / errors[1] > 3.5


def test_callback_sees_every_step_and_the_final_x():
    for name, sampler in SAMPLERS.items():
        sigmas = karras_sigmas(6, 0.002, 80.0)
        x = torch.randn(5, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 80
        seen = []
        out = sampler(ideal_denoiser, x, sigmas, generator=torch.Generator().manual_seed(3),
                      callback=lambda i, total, x_i, x0_hat: seen.append((i, total, x_i, x0_hat)))
        assert [(i, total) for i, total, _, _ in seen] == [(i, 6) for i in range(6)], name
        assert torch.equal(seen[-1][2], out), name
        # the last step (to sigma 0) is x0_hat at the last noise level, for every sampler
        assert torch.allclose(out, ideal_denoiser(seen[-2][2], torch.full((5,), sigmas[-2].item(),
                                                                           dtype=torch.float64))), name


def test_stochastic_samplers_draw_noise_only_from_the_generator():
    sigmas = karras_sigmas(8, 0.002, 80.0)
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 80

    def run(sampler, seed, **options):
        return sampler(ideal_denoiser, x, sigmas, generator=torch.Generator().manual_seed(seed), **options)

    churn = dict(S_churn=20.0)
    assert torch.equal(run(sample_heun, 5, **churn), run(sample_heun, 5, **churn))
    assert not torch.allclose(run(sample_heun, 5, **churn), run(sample_heun, 6, **churn))
    assert torch.equal(run(sample_ddpm_ancestral, 5), run(sample_ddpm_ancestral, 5))
    assert not torch.allclose(run(sample_ddpm_ancestral, 5), run(sample_ddpm_ancestral, 6))
    # without churn Heun is deterministic (EDM Algorithm 1), and so is DPM-Solver++(2M)
    assert torch.equal(run(sample_heun, 5), run(sample_heun, 6))
    assert torch.equal(run(sample_dpmpp_2m, 5), run(sample_dpmpp_2m, 6))


def test_churn_is_limited_to_the_s_tmin_s_tmax_window():
    """Churn outside [S_tmin, S_tmax] is off: a window that holds no sigma gives the deterministic result."""
    sigmas = karras_sigmas(10, 0.002, 80.0)
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64) * 80
    plain = sample_heun(ideal_denoiser, x, sigmas)
    outside = sample_heun(ideal_denoiser, x, sigmas, S_churn=40.0, S_tmin=100.0, S_tmax=200.0,
                          generator=torch.Generator().manual_seed(8))
    inside = sample_heun(ideal_denoiser, x, sigmas, S_churn=40.0, S_tmin=0.05, S_tmax=50.0,
                         generator=torch.Generator().manual_seed(8))
    assert torch.equal(plain, outside)
    assert not torch.allclose(plain, inside)


class SigmaRecorder:
    """A denoiser returning x0_hat = -ln(sigma) (the same for every x), recording (x, sigma) per call."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, sigma):
        self.calls.append((x.clone(), sigma[0].item()))
        return (-sigma.log())[:, None].expand_as(x).clone()


@pytest.mark.parametrize("S_churn, gamma", [(1.0, 0.2), (100.0, 2**0.5 - 1)])
def test_heun_churn_follows_algorithm_2(S_churn, gamma):
    """gamma = min(S_churn / N, sqrt(2) - 1) inside [S_tmin, S_tmax], t_hat = (1 + gamma) t_i, and the
    first denoiser call of a step sees x + sqrt(t_hat^2 - t_i^2) S_noise eps with eps the generator's draw."""
    sigmas = torch.tensor([10.0, 5.0, 2.0, 1.0, 0.5, 0.0], dtype=torch.float64)  # N = 5
    x = torch.tensor([[0.7, -1.2]], dtype=torch.float64)
    den = SigmaRecorder()
    sample_heun(den, x, sigmas, S_churn=S_churn, S_tmin=0.9, S_tmax=6.0, S_noise=1.1,
                generator=torch.Generator().manual_seed(9))
    # 2N - 1 = 9 calls: (t_hat, t_next) for steps 0-3, then t_hat of the last (Euler) step
    assert [s for _, s in den.calls[::2]] == pytest.approx(
        [10.0, 5.0 * (1 + gamma), 2.0 * (1 + gamma), 1.0 * (1 + gamma), 0.5], rel=1e-12
    )
    # step 0 is outside the window: x_hat = x. Heun's x_1 by hand from the two x0_hat = -ln(sigma):
    assert torch.equal(den.calls[0][0], x)
    t0, t1 = 10.0, 5.0
    d0 = (x + math.log(t0)) / t0
    d1 = (den.calls[1][0] + math.log(t1)) / t1
    x1 = x + (t1 - t0) * (0.5 * d0 + 0.5 * d1)
    # step 1 raises the noise: x_hat = x_1 + sqrt(t_hat^2 - t_1^2) S_noise eps, eps the generator's first draw
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    t_hat = t1 * (1 + gamma)
    assert torch.allclose(den.calls[2][0], x1 + math.sqrt(t_hat**2 - t1**2) * 1.1 * eps, rtol=1e-12, atol=1e-12)


def test_dpmpp_2m_update_by_hand():
    """Two steps of Lu et al.'s update with D = -ln(sigma): the second step extrapolates x0_hat to the
    middle of its log-sigma interval, D_1 = x0_1 + (x0_1 - x0_0) / (2 r), r = h_0 / h_1."""
    s0, s1, s2 = 10.0, 2.0, 0.1
    x = torch.tensor([[3.0, -4.0]], dtype=torch.float64)
    out = sample_dpmpp_2m(SigmaRecorder(), x, torch.tensor([s0, s1, s2], dtype=torch.float64))
    lam0, lam1, lam2 = -math.log(s0), -math.log(s1), -math.log(s2)
    h0, h1 = lam1 - lam0, lam2 - lam1
    x1 = (s1 / s0) * x - math.expm1(-h0) * lam0
    r = h0 / h1
    D1 = (1 + 1 / (2 * r)) * lam1 - 1 / (2 * r) * lam0
    assert D1 == pytest.approx(lam1 + h1 / 2 * (lam1 - lam0) / h0)
    x2 = (s2 / s1) * x1 - math.expm1(-h1) * D1
    assert torch.allclose(out, x2, rtol=1e-12, atol=1e-12)
