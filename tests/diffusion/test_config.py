import pytest

from nemo_imagen.diffusion import (
    ContinuousDDPM,
    DDPMConfig,
    EDMConfig,
    EDMPreconditioning,
    build_preconditioning,
    preconditioning_config_class,
)


def test_defaults_match_the_documented_block():
    assert EDMConfig() == EDMConfig(
        loss_type="l2", sigma_data=0.5, p_mean=-1.2, p_std=1.2, sigma_min=0.002, sigma_max=80.0, rho=7.0
    )
    assert DDPMConfig() == DDPMConfig(loss_type="l2", pred_objective="noise", noise_schedule="cosine", timesteps=1000)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: EDMConfig(loss_type="l3"), "preconditioning.loss_type: 'l3' is not one of l1, l2, huber"),
        (lambda: EDMConfig(sigma_data=0.0), "preconditioning.sigma_data:"),
        (lambda: EDMConfig(p_std=-1.0), "preconditioning.p_std:"),
        (lambda: EDMConfig(sigma_min=0.0), "preconditioning.sigma_min:"),
        (lambda: EDMConfig(sigma_min=1.0, sigma_max=0.5), "preconditioning.sigma_max:"),
        (lambda: EDMConfig(rho=0.0), "preconditioning.rho:"),
        (lambda: DDPMConfig(loss_type="mse"), "preconditioning.loss_type: 'mse' is not one of l1, l2, huber"),
        (lambda: DDPMConfig(pred_objective="v"), "preconditioning.pred_objective: 'v' is not one of noise, x_start"),
        (lambda: DDPMConfig(noise_schedule="sigmoid"), "preconditioning.noise_schedule: 'sigmoid' is not one of"),
        (lambda: DDPMConfig(timesteps=0), "preconditioning.timesteps:"),
        (lambda: DDPMConfig(timesteps=10.5), "preconditioning.timesteps:"),
    ],
)
def test_invalid_values_raise_with_the_key_first(make, message):
    with pytest.raises(ValueError) as info:
        make()
    assert str(info.value).startswith(message)


def test_configs_work_as_omegaconf_structured_schemas():
    OmegaConf = pytest.importorskip("omegaconf").OmegaConf
    merged = OmegaConf.merge(OmegaConf.structured(EDMConfig), {"loss_type": "huber", "sigma_data": 1})
    cfg = OmegaConf.to_object(merged)
    assert cfg == EDMConfig(loss_type="huber", sigma_data=1.0)
    with pytest.raises(Exception, match="p_means"):
        OmegaConf.merge(OmegaConf.structured(EDMConfig), {"p_means": 0.0})
    bad = OmegaConf.merge(OmegaConf.structured(DDPMConfig), {"noise_schedule": "sigmoid"})
    with pytest.raises(ValueError, match="^preconditioning.noise_schedule"):
        OmegaConf.to_object(bad)


def test_factory_builds_the_named_preconditioning():
    assert preconditioning_config_class("EDM") is EDMConfig
    assert preconditioning_config_class("DDPM") is DDPMConfig
    edm = build_preconditioning("EDM", EDMConfig(sigma_max=40.0))
    ddpm = build_preconditioning("DDPM", DDPMConfig(noise_schedule="linear"))
    assert isinstance(edm, EDMPreconditioning) and edm.sigma_max == 40.0
    assert isinstance(ddpm, ContinuousDDPM) and ddpm.cfg.noise_schedule == "linear"


def test_factory_rejects_unknown_types_and_mismatched_configs():
    with pytest.raises(ValueError, match="^preconditioning_type: 'edm' is not one of EDM, DDPM"):
        preconditioning_config_class("edm")
    with pytest.raises(ValueError, match="^preconditioning_type: 'VP' is not one of EDM, DDPM"):
        build_preconditioning("VP", EDMConfig())
    with pytest.raises(ValueError, match="^preconditioning: .*needs a DDPMConfig, got EDMConfig"):
        build_preconditioning("DDPM", EDMConfig())
