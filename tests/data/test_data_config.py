import pytest

from nemo_imagen.data.config import (
    AugmentationConfig,
    DataConfig,
    ResolutionFilterConfig,
    TrainDataConfig,
    WebdatasetConfig,
    parse_crop_h_w,
)


def test_defaults_describe_a_base_64_stage():
    cfg = DataConfig()
    assert cfg.train.target_resolutions == [64]
    assert parse_crop_h_w(cfg.train.augmentations.center_crop_h_w) == (64, 64)
    assert cfg.webdataset.infinite_sampler is False


def test_parse_crop_h_w_reads_nemo_spelling():
    assert parse_crop_h_w("256, 256") == (256, 256)
    assert parse_crop_h_w("64,32") == (64, 32)
    with pytest.raises(ValueError, match=r"^data\.train\.augmentations\.center_crop_h_w: '64x64'"):
        parse_crop_h_w("64x64")


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: ResolutionFilterConfig(method="bigger", value=64),
         r"^data\.train\.filterings\.resolution\.method: 'bigger' is not one of larger, smaller"),
        (lambda: ResolutionFilterConfig(value=0), r"^data\.train\.filterings\.resolution\.value: 0"),
        (lambda: AugmentationConfig(center_crop_h_w="64"), r"^data\.train\.augmentations\.center_crop_h_w"),
        (lambda: AugmentationConfig(resize_smallest_side=-1), r"^data\.train\.augmentations\.resize_smallest_side"),
        (lambda: TrainDataConfig(target_resolutions=[256, 64]), r"^data\.train\.target_resolutions: .* strictly increasing"),
        (lambda: TrainDataConfig(target_resolutions=[]), r"^data\.train\.target_resolutions"),
        (lambda: TrainDataConfig(target_resolutions=[64, 256]),
         r"^data\.train\.augmentations\.center_crop_h_w: '64, 64' must be '256, 256'"),
        (lambda: TrainDataConfig(augmentations=AugmentationConfig(center_crop_h_w=None)),
         r"^data\.train\.augmentations\.center_crop_h_w: must be set"),
        (lambda: TrainDataConfig(
            target_resolutions=[64, 256],
            augmentations=AugmentationConfig(resize_smallest_side=128, center_crop_h_w="256, 256")),
         r"^data\.train\.augmentations\.resize_smallest_side: 128 is smaller than the crop 256"),
        (lambda: WebdatasetConfig(shuffle_buffer=-1), r"^data\.webdataset\.shuffle_buffer"),
        (lambda: DataConfig(num_workers=-1), r"^data\.num_workers"),
    ],
)
def test_bad_values_raise_naming_the_key(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_an_sr256_block_is_accepted():
    train = TrainDataConfig(
        dataset_path=["shards/{000..009}.tar"],
        augmentations=AugmentationConfig(resize_smallest_side=256, center_crop_h_w="256, 256", random_crop=True),
        target_resolutions=[64, 256],
    )
    assert train.target_resolutions == [64, 256]


def test_nemo_style_yaml_merges_into_the_structured_config():
    omegaconf = pytest.importorskip("omegaconf")
    yaml = """
num_workers: 4
train:
  dataset_path: ['a/{0..3}.tar', b.tar]
  augmentations:
    resize_smallest_side: 256
    center_crop_h_w: 256, 256
    horizontal_flip: False
  filterings:
    resolution:
      method: larger
      value: 256
  target_resolutions: [64, 256]
webdataset:
  infinite_sampler: True
"""
    schema = omegaconf.OmegaConf.structured(DataConfig)
    cfg = omegaconf.OmegaConf.to_object(omegaconf.OmegaConf.merge(schema, omegaconf.OmegaConf.create(yaml)))
    assert isinstance(cfg, DataConfig)
    assert cfg.train.filterings.resolution.value == 256
    assert cfg.train.augmentations.center_crop_h_w == "256, 256"
    assert cfg.webdataset.infinite_sampler is True
    with pytest.raises(omegaconf.errors.ConfigKeyError, match="use_local_copy"):
        omegaconf.OmegaConf.merge(schema, {"webdataset": {"use_local_copy": True}})
