"""Super-resolution stages outside a training run: config checks, resolutions, low-res inputs at sampling."""
import pytest
import torch
from omegaconf import OmegaConf

from nemo_imagen.diffusion import augment_lowres
from nemo_imagen.models.config import ConfigError, validate_model_config
from nemo_imagen.models.imagen import MegatronImagen
from tests.tiny import TINY_CONDITIONING, TINY_UNETS


def sr_cfg(config="sr256-600m-edm", **changes):
    cfg = OmegaConf.load(f"examples/conf/{config}.yaml").model
    cfg.precision = 32
    cfg.unet = OmegaConf.merge(cfg.unet, TINY_UNETS[cfg.unet_type])
    cfg.conditioning = OmegaConf.merge(cfg.conditioning, TINY_CONDITIONING)
    for key, value in changes.items():
        OmegaConf.update(cfg, key, value, merge=False, force_add=True)
    return cfg


@pytest.mark.parametrize(
    "config, key, value, words",
    [
        ("sr256-600m-edm", "data.train.target_resolutions", [256], "model.data.train.target_resolutions"),
        ("sr256-600m-edm", "data.train.target_resolutions", [48, 256], "multiple of low"),
        ("sr256-600m-edm", "unet.num_res_blocks", 2, "model.unet.num_res_blocks"),  # a regular-UNet key on the Efficient UNet
        ("sr256-400m", "unet.num_resblocks", [1, 1, 1, 1], "model.unet.num_resblocks"),
        ("sr256-400m", "preconditioning.sigma_data", 0.5, "model.preconditioning.sigma_data"),  # an EDM key under DDPM  # and the other way round
        ("sr256-600m-edm", "noise_cond_aug_sigma", 0.0, "model.noise_cond_aug_sigma"),
        ("base64-500m-edm", "noise_cond_aug", True, "model.noise_cond_aug"),
        ("quickstart-sr256", "sample_log.thresholding", "dynamc", "model.sample_log.thresholding"),
    ],
)
def test_bad_sr_settings_name_the_key(config, key, value, words):
    cfg = OmegaConf.load(f"examples/conf/{config}.yaml").model
    OmegaConf.update(cfg, key, value, force_add=True)
    with pytest.raises(ConfigError, match=words):
        validate_model_config(cfg)


@pytest.mark.parametrize(
    "config, low, factor",
    [("sr256-400m", 64, 4), ("sr256-600m-edm", 64, 4), ("sr1024-400m", 256, 4), ("quickstart-sr256", 64, 4)],
)
def test_low_resolution_follows_the_training_pair(config, low, factor):
    typed, _ = validate_model_config(OmegaConf.load(f"examples/conf/{config}.yaml").model)
    assert typed.is_super_resolution and typed.low_resolution == low and typed.upscale_factor == factor


class Recorder(torch.nn.Module):
    """Stands in for the UNet: records its low-res arguments and returns zeros."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, noise_cond, text_embed, text_mask, lowres, lowres_noise_cond=None, drop_text=None):
        self.calls.append((lowres, lowres_noise_cond))
        return torch.zeros_like(x)


@pytest.mark.parametrize("precond", ["EDM", "DDPM"])
def test_sampling_augments_the_low_res_input_at_the_configured_level(precond):
    changes = {"preconditioning_type": precond, "noise_cond_aug_sigma": 0.25, "ema.enable": False}
    if precond == "DDPM":
        changes["preconditioning"] = {"loss_type": "l2", "pred_objective": "noise", "noise_schedule": "cosine", "timesteps": 10}
    model = MegatronImagen(sr_cfg(**changes))
    model.unet = Recorder()
    text = torch.randn(2, 8, 16)
    mask = torch.ones(2, 8, dtype=torch.bool)
    lowres = torch.rand(2, 3, 64, 64) * 2 - 1
    model.sample(text, mask, lowres=lowres, sampler="dpmpp", steps=2, guidance_scale=3.0, generator=torch.Generator().manual_seed(4))
    seen, seen_cond = model.unet.calls[0]
    expected, expected_cond = augment_lowres(model.precond, lowres, torch.full((2,), 0.25), torch.Generator().manual_seed(4))
    # guidance runs [cond; uncond] as one batch: the low-res input is tiled, identical in both halves
    torch.testing.assert_close(seen, torch.cat([expected, expected]))
    torch.testing.assert_close(seen_cond, torch.cat([expected_cond, expected_cond]))
    assert all(torch.equal(call[0], seen) for call in model.unet.calls)  # the same corruption at every step


def test_sampling_checks_the_low_res_input():
    model = MegatronImagen(sr_cfg())
    text, mask = torch.randn(1, 8, 16), torch.ones(1, 8, dtype=torch.bool)
    with pytest.raises(ConfigError, match="needs the 64x64 images"):
        model.sample(text, mask, steps=1)
    with pytest.raises(ConfigError, match=r"upscales \[1, 3, 64, 64\]"):
        model.sample(text, mask, lowres=torch.zeros(1, 3, 32, 32), steps=1)
    out = model.sample(text, mask, lowres=torch.zeros(1, 3, 64, 64), sampler="dpmpp", steps=1, guidance_scale=1.0)
    assert out.shape == (1, 3, 256, 256)
