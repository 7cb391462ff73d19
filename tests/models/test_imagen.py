"""MegatronImagen outside a training run: config checks, .nemo round trip, EMA, sampling determinism."""
import pytest
import torch
from omegaconf import OmegaConf

from nemo_imagen.models.config import ConfigError, validate_model_config
from nemo_imagen.models.imagen import MegatronImagen
from nemo_imagen.models.megatron_base import gradient_accumulation_steps, trainer_data_parallel_size
from tests.tiny import TINY_CONDITIONING, TINY_UNET

CONF = "examples/conf/base64-500m.yaml"


def tiny_model_cfg(**changes):
    cfg = OmegaConf.load(CONF).model
    cfg.precision = 32
    cfg.unet = OmegaConf.merge(cfg.unet, TINY_UNET)
    cfg.conditioning = OmegaConf.merge(cfg.conditioning, TINY_CONDITIONING)
    cfg.data.synthetic_data = True
    for key, value in changes.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    return cfg


def inputs(model, batch=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    cond = model.typed_cfg.conditioning
    x = torch.randn(batch, 3, 64, 64, generator=generator)
    text = torch.randn(batch, cond.token_length, cond.embed_dim, generator=generator)
    mask = torch.arange(cond.token_length)[None] < torch.tensor([[3], [8], [1]])[:batch]
    return x, torch.linspace(-1, 1, batch), text, mask


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("unet.not_a_key", 1, "not_a_key"),
        ("preconditioning.p_means", 1.0, "p_means"),
        ("preconditioning_type", "VP", "preconditioning_type"),
        ("unet_type", "huge", "unet_type"),
        ("global_batch_size", 3, "global_batch_size"),
        ("optim.name", "lamb", "optim.name"),
        ("ema.decay", 1.5, "ema.decay"),
        ("conditioning.drop_rate", 2.0, "drop_rate"),
        ("unet.attention_type", "sparse", "attention_type"),
    ],
)
def test_bad_config_names_the_key(key, value, words):
    with pytest.raises(ConfigError, match=words):
        validate_model_config(tiny_model_cfg(**{key: value}))


def test_edm_config_rejects_ddpm_keys():
    cfg = tiny_model_cfg(preconditioning_type="EDM")
    with pytest.raises(ConfigError, match="pred_objective"):
        validate_model_config(cfg)  # the DDPM block's keys under an EDM preconditioning


def test_gradient_accumulation_arithmetic():
    assert gradient_accumulation_steps(micro_batch_size=8, global_batch_size=2048, dp_size=16) == 16
    with pytest.raises(ConfigError, match="global_batch_size"):
        gradient_accumulation_steps(micro_batch_size=8, global_batch_size=100, dp_size=16)
    assert trainer_data_parallel_size(OmegaConf.create({"devices": 8, "num_nodes": 2})) == 16
    assert trainer_data_parallel_size(OmegaConf.create({"devices": [0, 1, 2], "num_nodes": 1})) == 3


def test_nemo_round_trip_reproduces_outputs(tmp_path):
    torch.manual_seed(0)
    model = MegatronImagen(tiny_model_cfg()).eval()
    with torch.no_grad():  # make the EMA copy differ from the live weights
        for param in model.ema_unet.parameters():
            param.add_(0.01 * torch.randn_like(param))
    path = tmp_path / "tiny.nemo"
    model.save_to(str(path))
    restored = MegatronImagen.restore_from(str(path), map_location="cpu").eval()
    x, noise_cond, text, mask = inputs(model)
    with torch.no_grad():
        for name in ("unet", "ema_unet"):
            expected = getattr(model, name)(x, noise_cond, text, mask)
            actual = getattr(restored, name)(x, noise_cond, text, mask)
            assert torch.equal(expected, actual), name
    assert not torch.equal(model.unet(x, noise_cond, text, mask), model.ema_unet(x, noise_cond, text, mask))


def test_ema_update_follows_the_warmed_up_decay():
    model = MegatronImagen(tiny_model_cfg(**{"ema.decay": 0.9}))
    ema_before = [p.clone() for p in model.ema_unet.parameters()]
    with torch.no_grad():
        for param in model.unet.parameters():
            param.add_(1.0)
    model._update_ema(step=100)  # min(0.9, 101/110) = 0.9
    for before, live, ema in zip(ema_before, model.unet.parameters(), model.ema_unet.parameters()):
        torch.testing.assert_close(ema, 0.9 * before + 0.1 * live)
    model._update_ema(step=0)  # min(0.9, 1/10) = 0.1: early steps follow the live weights closely
    for before, live, ema in zip(ema_before, model.unet.parameters(), model.ema_unet.parameters()):
        torch.testing.assert_close(ema, 0.1 * (0.9 * before + 0.1 * live) + 0.9 * live)


@pytest.mark.parametrize("precond", ["DDPM", "EDM"])
def test_sampling_is_seeded_and_bounded(precond):
    changes = {"preconditioning_type": precond}
    if precond == "EDM":
        changes["preconditioning"] = {"loss_type": "l2"}
    cfg = tiny_model_cfg(**changes)
    if precond == "EDM":
        cfg.preconditioning = {"loss_type": "l2"}
    model = MegatronImagen(cfg)
    _, _, text, mask = inputs(model, batch=2)
    runs = [model.sample(text, mask, sampler="dpmpp", steps=3, guidance_scale=2.0,
                         generator=torch.Generator().manual_seed(seed)) for seed in (1, 1, 2)]
    assert runs[0].shape == (2, 3, 64, 64)
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])
    assert runs[0].abs().max() <= 1.0
