import math

import pytest
import torch

from nemo_imagen.diffusion import EDMConfig, EDMPreconditioning, edm_coefficients, edm_loss_weight

SIGMAS = [0.002, 0.05, 0.3, 0.5, 1.0, 4.0, 80.0]


class Recorder:
    """A raw network that returns `fn(x_in, noise_cond)` and keeps its inputs."""

    def __init__(self, fn):
        self.fn = fn
        self.calls = []

    def __call__(self, x_in, noise_cond, **cond):
        self.calls.append((x_in, noise_cond, cond))
        return self.fn(x_in, noise_cond)


@pytest.mark.parametrize("sigma_data", [0.5, 1.3])
def test_coefficients_and_weight_match_closed_forms(sigma_data):
    sigma = torch.tensor(SIGMAS, dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, sigma_data)
    weight = edm_loss_weight(sigma, sigma_data)
    for i, s in enumerate(SIGMAS):
        sd = sigma_data
        assert c_skip[i].item() == pytest.approx(sd**2 / (s**2 + sd**2), rel=1e-12)
        assert c_out[i].item() == pytest.approx(s * sd / math.sqrt(s**2 + sd**2), rel=1e-12)
        assert c_in[i].item() == pytest.approx(1 / math.sqrt(s**2 + sd**2), rel=1e-12)
        assert c_noise[i].item() == pytest.approx(math.log(s) / 4, rel=1e-12)
        assert weight[i].item() == pytest.approx((s**2 + sd**2) / (s * sd) ** 2, rel=1e-12)
        assert weight[i].item() == pytest.approx(1 / c_out[i].item() ** 2, rel=1e-12)


def test_denoise_feeds_c_in_x_and_c_noise_and_mixes_with_c_skip_c_out():
    precond = EDMPreconditioning(EDMConfig(sigma_data=0.7))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.01, 0.9, 30.0], dtype=torch.float64)
    net = Recorder(lambda x_in, c: 2 * x_in + c[:, None, None, None])
    out = precond.denoise(net, x, sigma, text_embed="passed through")
    (x_in, noise_cond, cond), = net.calls
    assert cond == {"text_embed": "passed through"}
    for b in range(3):
        s, sd = sigma[b].item(), 0.7
        c_in = 1 / math.sqrt(s**2 + sd**2)
        c_noise = math.log(s) / 4
        assert torch.allclose(x_in[b], c_in * x[b], rtol=1e-12, atol=0)
        assert noise_cond[b].item() == pytest.approx(c_noise, rel=1e-12)
        expected = sd**2 / (s**2 + sd**2) * x[b] + s * sd / math.sqrt(s**2 + sd**2) * (2 * c_in * x[b] + c_noise)
        assert torch.allclose(out[b], expected, rtol=1e-12, atol=1e-12)


def _oracle_net(precond, x0):
    """Returns F_target = (x0 - c_skip x) / c_out, reading sigma from c_noise and x from c_in x."""

    def fn(x_in, c_noise):
        sigma = torch.exp(4 * c_noise)
        c_skip, c_out, c_in, _ = precond.coefficients(sigma)
        x = x_in / c_in[:, None, None, None]
        return (x0 - c_skip[:, None, None, None] * x) / c_out[:, None, None, None]

    return Recorder(fn)


@pytest.mark.parametrize("loss_type", ["l1", "l2", "huber"])
def test_loss_of_the_exact_target_is_zero(loss_type):
    precond = EDMPreconditioning(EDMConfig(loss_type=loss_type))
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(8, 3, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    loss = precond.loss(_oracle_net(precond, x0), x0, generator=g)
    assert loss.shape == (8,)
    assert loss.abs().max().item() < 1e-10
    # and a network that is off by 0.1 everywhere is not at zero: r = sqrt(lambda) c_out 0.1 = 0.1
    off = Recorder(lambda x_in, c: _oracle_net(precond, x0).fn(x_in, c) + 0.1)
    expected = {"l2": 0.01, "l1": 0.1, "huber": 0.005}[loss_type]
    assert torch.allclose(precond.loss(off, x0, generator=g), torch.full((8,), expected, dtype=torch.float64))


@pytest.mark.parametrize("loss_type", ["l1", "l2", "huber"])
def test_loss_values_by_hand_for_a_zero_network(loss_type):
    sd = 0.5
    precond = EDMPreconditioning(EDMConfig(loss_type=loss_type, sigma_data=sd))
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand(4, 1, 3, 3, generator=g, dtype=torch.float64) * 2 - 1
    sigma = torch.tensor([0.02, 0.5, 2.0, 60.0], dtype=torch.float64)
    net = Recorder(lambda x_in, c: torch.zeros_like(x_in))
    loss = precond.loss(net, x0, generator=g, sigma=sigma)
    x_in, noise_cond, _ = net.calls[0]
    for b, s in enumerate(sigma.tolist()):
        assert noise_cond[b].item() == pytest.approx(math.log(s) / 4, rel=1e-12)
        x = x_in[b] * math.sqrt(s**2 + sd**2)  # the noisy input, x0 + sigma n
        D = sd**2 / (s**2 + sd**2) * x
        r = math.sqrt((s**2 + sd**2) / (s * sd) ** 2) * (D - x0[b])
        if loss_type == "l2":
            expected = (r**2).mean()
        elif loss_type == "l1":
            expected = r.abs().mean()
        else:
            expected = torch.where(r.abs() < 1, 0.5 * r**2, r.abs() - 0.5).mean()
        assert loss[b].item() == pytest.approx(expected.item(), rel=1e-10)


def test_training_noise_levels_follow_the_lognormal_and_noise_is_standard():
    """ln(sigma) ~ N(p_mean, p_std^2) and x = x0 + sigma n with n ~ N(0, 1), checked on N draws to
    5 standard errors: mean +- 5 p_std / sqrt(N), std +- 5 p_std / sqrt(2N)."""
    p_mean, p_std, sd, N = 0.4, 1.5, 0.5, 40000
    precond = EDMPreconditioning(EDMConfig(p_mean=p_mean, p_std=p_std, sigma_data=sd))
    x0 = torch.full((N, 1, 1, 1), 0.3, dtype=torch.float64)
    net = Recorder(lambda x_in, c: torch.zeros_like(x_in))
    precond.loss(net, x0, generator=torch.Generator().manual_seed(3))
    x_in, noise_cond, _ = net.calls[0]
    ln_sigma = 4 * noise_cond
    assert abs(ln_sigma.mean().item() - p_mean) < 5 * p_std / math.sqrt(N)
    assert abs(ln_sigma.std().item() - p_std) < 5 * p_std / math.sqrt(2 * N)
    sigma = ln_sigma.exp()
    n = (x_in.flatten() * (sigma**2 + sd**2).sqrt() - 0.3) / sigma
    assert abs(n.mean().item()) < 5 / math.sqrt(N)
    assert abs(n.std().item() - 1) < 5 / math.sqrt(2 * N)


def test_sample_sigma_is_reproducible_with_a_generator():
    precond = EDMPreconditioning(EDMConfig())
    a = precond.sample_training_sigma(16, generator=torch.Generator().manual_seed(7))
    b = precond.sample_training_sigma(16, generator=torch.Generator().manual_seed(7))
    c = precond.sample_training_sigma(16, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
