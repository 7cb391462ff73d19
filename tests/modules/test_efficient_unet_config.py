import dataclasses

import pytest
from omegaconf import OmegaConf

from nemo_imagen.modules import (
    EfficientUNet,
    EfficientUNetConfig,
    SRUNet,
    UNet,
    UNetConfig,
    build_unet,
    unet_config_class,
)

# The documented `model.unet` block of the Efficient UNet (NeMo Imagen docs), verbatim.
DOCUMENTED_YAML = """
embed_dim: 128
image_size: 256
channels: 3
channel_mult: [ 1, 2, 4, 8, 8 ]
num_attn_heads: 8
per_head_channels: 64
attention_type: stacked
atnn_enabled_at: [ 0, 0, 0, 1, 1 ]
feature_pooling_type: attention
stride: 2
num_resblocks: [ 2, 4, 8, 8, 8 ]
learned_sinu_pos_emb_dim: 0
use_null_token: False
init_conv_kernel_size: 3
gradient_checkpointing: False
scale_shift_norm: True
stable_attention: False
flash_attention: False
skip_connection_scaling: True
"""


def test_defaults_are_the_documented_block_plus_cond_dim_and_dropout():
    documented = OmegaConf.to_container(OmegaConf.create(DOCUMENTED_YAML))
    defaults = dataclasses.asdict(EfficientUNetConfig())
    assert defaults.pop("cond_dim") == 512  # the documentation's "Text Condition Size"
    assert defaults.pop("dropout") == 0.0
    assert defaults == documented


def test_documented_yaml_round_trips_through_omegaconf_structured():
    merged = OmegaConf.merge(OmegaConf.structured(EfficientUNetConfig), OmegaConf.create(DOCUMENTED_YAML))
    cfg = OmegaConf.to_object(merged)
    assert isinstance(cfg, EfficientUNetConfig) and cfg == EfficientUNetConfig()
    merged = OmegaConf.merge(merged, OmegaConf.create({"num_resblocks": 3, "dropout": False}))
    cfg = OmegaConf.to_object(merged)
    assert cfg.res_blocks_per_level() == [3] * 5 and cfg.dropout == 0.0


@pytest.mark.parametrize("regular_key", ["num_res_blocks", "attention_resolutions", "resblock_updown"])
def test_regular_unet_keys_are_rejected_by_name(regular_key):
    with pytest.raises(Exception, match=regular_key):
        OmegaConf.merge(OmegaConf.structured(EfficientUNetConfig), OmegaConf.create({regular_key: 3}))


def test_level_geometry_downsamples_before_every_level_but_the_deepest():
    cfg = EfficientUNetConfig()
    assert [cfg.level_resolution(level) for level in range(5)] == [128, 64, 32, 16, 16]
    assert [cfg.level_input_channels(level) for level in range(5)] == [128, 128, 256, 512, 1024]
    assert [cfg.resamples(level) for level in range(5)] == [True, True, True, True, False]
    assert cfg.total_downsampling == 16
    assert EfficientUNetConfig(image_size=81, stride=3, channel_mult=[1, 2, 2], num_resblocks=2,
                               atnn_enabled_at=[0, 0, 1]).total_downsampling == 9


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"atnn_enabled_at": [0, 0, 1]}, "atnn_enabled_at"),
        ({"atnn_enabled_at": [0, 0, 0, 2, 1]}, "atnn_enabled_at"),
        ({"num_resblocks": [2, 4, 8]}, "num_resblocks"),
        ({"num_resblocks": [2, 4, 8, 0, 8]}, "num_resblocks"),
        ({"num_resblocks": "8"}, "num_resblocks"),
        ({"stride": 1}, "stride"),
        ({"image_size": 200}, "image_size"),
        ({"stride": 3}, "image_size"),
        ({"flash_attention": True, "stable_attention": True}, "flash_attention"),
        ({"attention_type": "both"}, "attention_type"),
        ({"feature_pooling_type": "max"}, "feature_pooling_type"),
        ({"embed_dim": 18}, "embed_dim"),  # 18 channels: GroupNorm needs 4 channels a group
        ({"per_head_channels": 96}, "per_head_channels"),
        ({"per_head_channels": 0, "num_attn_heads": 3}, "num_attn_heads"),
        ({"channel_mult": []}, "channel_mult"),
        ({"cond_dim": 0}, "cond_dim"),
        ({"dropout": 1.0}, "dropout"),
        ({"learned_sinu_pos_emb_dim": 7}, "learned_sinu_pos_emb_dim"),
        ({"init_conv_kernel_size": 2}, "init_conv_kernel_size"),
        ({"skip_connection_scaling": 1}, "skip_connection_scaling"),
    ],
)
def test_bad_value_names_its_key(overrides, key):
    with pytest.raises(ValueError, match=rf"^unet\.{key}: "):
        EfficientUNetConfig(**overrides)


def test_heads_checked_on_both_sides_of_an_attention_level():
    # level 1 has 64 channels on the way down but 32 (level 0's) on the way up
    values = dict(embed_dim=32, image_size=16, channel_mult=[1, 2, 2], num_resblocks=1, atnn_enabled_at=[0, 1, 0])
    assert EfficientUNetConfig(per_head_channels=32, **values)
    with pytest.raises(ValueError, match=r"^unet\.per_head_channels: 64 does not divide the 32 channels"):
        EfficientUNetConfig(per_head_channels=64, **values)


def test_unet_type_selects_config_and_model():
    assert unet_config_class("base") is UNetConfig and unet_config_class("sr-unet") is UNetConfig
    assert unet_config_class("sr") is EfficientUNetConfig
    with pytest.raises(ValueError, match=r"^unet_type: 'sr256' is not one of base, sr-unet, sr"):
        unet_config_class("sr256")
    tiny = UNetConfig(embed_dim=32, image_size=16, channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[8],
                      per_head_channels=16, cond_dim=32)
    tiny_sr = EfficientUNetConfig(embed_dim=32, image_size=16, channel_mult=[1, 2], num_resblocks=1,
                                  atnn_enabled_at=[0, 1], per_head_channels=16, cond_dim=32)
    assert type(build_unet("base", tiny, 8)) is UNet
    assert type(build_unet("sr-unet", tiny, 8)) is SRUNet
    assert type(build_unet("sr", tiny_sr, 8, noise_cond_aug=True)) is EfficientUNet
    with pytest.raises(ValueError, match=r"^unet: unet_type 'sr' needs a EfficientUNetConfig"):
        build_unet("sr", tiny, 8)
    with pytest.raises(ValueError, match=r"^noise_cond_aug: "):
        build_unet("base", tiny, 8, noise_cond_aug=True)
