import dataclasses

import pytest
from omegaconf import OmegaConf

from nemo_imagen.modules import UNetConfig

# The documented `model.unet` block of the regular UNet (NeMo Imagen docs), verbatim.
DOCUMENTED_YAML = """
embed_dim: 256
image_size: 64
channels: 3
num_res_blocks: 3
channel_mult: [ 1, 2, 3, 4 ]
num_attn_heads: 4
per_head_channels: 64
cond_dim: 512
attention_type: fused
feature_pooling_type: attention
learned_sinu_pos_emb_dim: 0
attention_resolutions: [ 8, 16, 32 ]
dropout: False
use_null_token: False
init_conv_kernel_size: 3
gradient_checkpointing: False
scale_shift_norm: True
stable_attention: True
flash_attention: False
resblock_updown: False
resample_with_conv: True
"""


def test_defaults_are_the_documented_block():
    documented = OmegaConf.to_container(OmegaConf.create(DOCUMENTED_YAML))
    documented["dropout"] = 0.0
    documented["float32_resolutions"] = []  # ours, not documented: no level kept out of autocast by default
    assert dataclasses.asdict(UNetConfig()) == documented


def test_documented_yaml_round_trips_through_omegaconf_structured():
    merged = OmegaConf.merge(OmegaConf.structured(UNetConfig), OmegaConf.create(DOCUMENTED_YAML))
    cfg = OmegaConf.to_object(merged)
    assert isinstance(cfg, UNetConfig)
    assert cfg.dropout == 0.0 and isinstance(cfg.dropout, float)
    assert cfg == UNetConfig()


def test_unknown_key_is_rejected_by_name():
    with pytest.raises(Exception, match="num_resblocks"):
        OmegaConf.merge(OmegaConf.structured(UNetConfig), OmegaConf.create({"num_resblocks": 3}))


def test_validation_runs_inside_omegaconf_to_object():
    merged = OmegaConf.merge(OmegaConf.structured(UNetConfig), OmegaConf.create({"attention_type": "foo"}))
    with pytest.raises(ValueError, match=r"^unet\.attention_type: 'foo' is not one of self, cross, stacked, fused"):
        OmegaConf.to_object(merged)


def test_per_level_num_res_blocks_list():
    cfg = UNetConfig(num_res_blocks=[2, 2, 3, 4])
    assert cfg.res_blocks_per_level() == [2, 2, 3, 4]
    assert UNetConfig(num_res_blocks=2).res_blocks_per_level() == [2, 2, 2, 2]


def test_heads_follow_per_head_channels_else_num_attn_heads():
    assert [UNetConfig().num_heads(c) for c in (256, 512, 768, 1024)] == [4, 8, 12, 16]
    assert UNetConfig(per_head_channels=-1, num_attn_heads=8).num_heads(1024) == 8


def test_flash_without_stable_is_valid():
    assert UNetConfig(flash_attention=True, stable_attention=False).flash_attention


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"attention_type": "foo"}, "attention_type"),
        ({"feature_pooling_type": "max"}, "feature_pooling_type"),
        ({"num_res_blocks": [2, 2]}, "num_res_blocks"),
        ({"num_res_blocks": 0}, "num_res_blocks"),
        ({"num_res_blocks": "3"}, "num_res_blocks"),
        ({"attention_resolutions": [8, 12]}, "attention_resolutions"),
        ({"attention_resolutions": [4]}, "attention_resolutions"),
        ({"float32_resolutions": [128]}, "float32_resolutions"),
        ({"embed_dim": 48}, "embed_dim"),
        ({"per_head_channels": 48}, "per_head_channels"),
        ({"per_head_channels": 0, "num_attn_heads": 3}, "num_attn_heads"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"dropout": True}, "dropout"),
        ({"flash_attention": True}, "flash_attention"),
        ({"image_size": 60}, "image_size"),
        ({"learned_sinu_pos_emb_dim": 15}, "learned_sinu_pos_emb_dim"),
        ({"learned_sinu_pos_emb_dim": -2}, "learned_sinu_pos_emb_dim"),
        ({"init_conv_kernel_size": 4}, "init_conv_kernel_size"),
        ({"channel_mult": []}, "channel_mult"),
        ({"cond_dim": 0}, "cond_dim"),
    ],
)
def test_bad_value_names_its_key(overrides, key):
    with pytest.raises(ValueError, match=rf"^unet\.{key}: "):
        UNetConfig(**overrides)


def test_flash_and_stable_together_is_called_contradictory():
    with pytest.raises(ValueError, match="contradictory"):
        UNetConfig(flash_attention=True, stable_attention=True)


def test_per_head_channels_only_checked_where_attention_runs():
    # 96 channels at level 0 (32x32) are not divisible by 64, but that level has no attention.
    cfg = UNetConfig(
        embed_dim=96, channel_mult=[1, 2], image_size=32, attention_resolutions=[16], per_head_channels=64
    )
    assert cfg.level_channels(1) == 192
    with pytest.raises(ValueError, match=r"^unet\.per_head_channels: "):
        UNetConfig(embed_dim=96, channel_mult=[1, 2], image_size=32, attention_resolutions=[32], per_head_channels=64)


def test_narrow_levels_need_four_channels_a_group_wide_levels_a_multiple_of_32():
    # below 128 channels GroupNorm uses channels // 4 groups (norm_groups), so 16 and 24 channels are fine
    cfg = UNetConfig(embed_dim=16, channel_mult=[1, 2, 4, 8], image_size=64, attention_resolutions=[8], per_head_channels=32)
    assert [cfg.level_channels(level) for level in range(4)] == [16, 32, 64, 128]
    UNetConfig(embed_dim=24, channel_mult=[1, 2], image_size=32, attention_resolutions=[16], per_head_channels=24)
    with pytest.raises(ValueError, match=r"^unet\.embed_dim: level 0 has 18 channels"):
        UNetConfig(embed_dim=18, channel_mult=[1, 2], image_size=32, attention_resolutions=[16], per_head_channels=18)
    with pytest.raises(ValueError, match=r"^unet\.embed_dim: level 1 has 144 channels"):
        UNetConfig(embed_dim=48, channel_mult=[1, 3], image_size=32, attention_resolutions=[16], per_head_channels=48)
