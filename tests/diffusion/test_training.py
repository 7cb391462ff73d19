"""The training loss shared by MegatronImagen.training_step and the benchmark, against a float64 hand computation."""
import math

import pytest
import torch

from nemo_imagen.diffusion import EDMConfig, EDMPreconditioning
from nemo_imagen.diffusion.training import batched_draws, diffusion_loss, draw_per_sample


def recording_net(calls):
    """A raw network that records its inputs and returns a fixed function of them."""

    def net(x_in, noise_cond, text_embed, text_mask, drop_text, lowres=None, lowres_noise_cond=None):
        calls.append(dict(x_in=x_in, noise_cond=noise_cond, drop_text=drop_text, lowres=lowres,
                          lowres_noise_cond=lowres_noise_cond))
        out = 0.3 * x_in + noise_cond[:, None, None, None]
        if lowres is not None:
            out = out + torch.nn.functional.interpolate(lowres, size=x_in.shape[-2:], mode="nearest")
        return out

    return net


def test_diffusion_loss_is_the_edm_loss_of_the_keyed_draws_with_the_augmented_low_res_input():
    precond = EDMPreconditioning(EDMConfig(sigma_data=0.5))
    images = torch.rand(3, 3, 8, 8, dtype=torch.float64) * 2 - 1
    lowres = torch.rand(3, 3, 2, 2, dtype=torch.float64) * 2 - 1
    text_embed, text_mask = torch.randn(3, 4, 5), torch.ones(3, 4, dtype=torch.bool)
    draws = draw_per_sample(precond, ["a/1", "a/2", "b/1"], 7, 11, images.shape[1:], 0.5, "cpu", lowres.shape[1:])
    draws = draws._replace(**{k: getattr(draws, k).double() for k in ("sigma", "noise", "lowres_sigma", "lowres_noise")})
    calls = []
    loss = diffusion_loss(precond, recording_net(calls), images, text_embed, text_mask, draws, lowres, True)
    (call,) = calls
    expected = []
    for i in range(3):
        s, a = draws.sigma[i].item(), draws.lowres_sigma[i].item()
        norm = math.sqrt(s**2 + 0.25)
        x = images[i] + s * draws.noise[i]
        low = (lowres[i] + a * draws.lowres_noise[i]) / math.sqrt(a**2 + 0.25)
        torch.testing.assert_close(call["lowres"][i], low, rtol=1e-12, atol=1e-12)
        assert call["lowres_noise_cond"][i].item() == math.log(a) / 4
        assert bool(call["drop_text"][i]) == bool(draws.drop_text[i])
        f = 0.3 * x / norm + math.log(s) / 4 + low.repeat_interleave(4, -1).repeat_interleave(4, -2)
        denoised = 0.25 / norm**2 * x + s * 0.5 / norm * f
        expected.append(((denoised - images[i]) ** 2).mean() * norm**2 / (s * 0.5) ** 2)
    assert loss.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-12)


def test_without_augmentation_the_low_res_image_reaches_the_network_unchanged():
    precond = EDMPreconditioning(EDMConfig())
    images, lowres = torch.zeros(2, 3, 4, 4), torch.rand(2, 3, 2, 2)
    draws = batched_draws(precond, 2, images.shape[1:], 0.0, "cpu", lowres.shape[1:])
    calls = []
    diffusion_loss(precond, recording_net(calls), images, torch.zeros(2, 1, 5), torch.ones(2, 1), draws, lowres, False)
    assert calls[0]["lowres"] is lowres and calls[0]["lowres_noise_cond"] is None
    assert not calls[0]["drop_text"].any()  # drop rate 0


def test_batched_draws_work_on_the_meta_device_for_flop_counting():
    precond = EDMPreconditioning(EDMConfig())
    draws = batched_draws(precond, 4, (3, 16, 16), 0.1, "meta", (3, 4, 4))
    assert draws.noise.shape == (4, 3, 16, 16) and draws.lowres_noise.shape == (4, 3, 4, 4)
    assert draws.sigma.device.type == "meta"
    net = recording_net([])
    loss = diffusion_loss(precond, net, torch.empty(4, 3, 16, 16, device="meta"), torch.empty(4, 2, 5, device="meta"),
                          torch.ones(4, 2, dtype=torch.bool, device="meta"), draws,
                          torch.empty(4, 3, 4, 4, device="meta"), True)
    assert loss.shape == () and loss.device.type == "meta"
