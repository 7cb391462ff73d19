import pytest

from nemo_imagen.text import ConditioningConfig


def test_defaults_are_the_documented_nemo_values():
    cfg = ConditioningConfig()
    assert (cfg.embed_dim, cfg.token_length, cfg.drop_rate) == (1024, 128, 0.1)
    assert (cfg.precached_key, cfg.out_key) == ("embeddings_t5_xxl", "t5_text")
    assert cfg.online_encoding is False and cfg.encoder_path is None


@pytest.mark.parametrize("drop_rate", [1.5, 1.0, -0.1])
def test_drop_rate_outside_unit_interval_names_the_key(drop_rate):
    with pytest.raises(ValueError, match=rf"^conditioning\.drop_rate: {drop_rate} is not in \[0, 1\)$"):
        ConditioningConfig(drop_rate=drop_rate)


def test_drop_rate_interval_is_closed_at_zero():
    ConditioningConfig(drop_rate=0.0)  # no text dropout (no unconditional model): accepted, no error
    ConditioningConfig(drop_rate=0.999)
    with pytest.raises(ValueError, match=r"^conditioning\.drop_rate: -1e-06 is not in"):
        ConditioningConfig(drop_rate=-1e-6)


@pytest.mark.parametrize("key,value", [("embed_dim", 0), ("embed_dim", -4), ("token_length", 0), ("embed_dim", True)])
def test_non_positive_sizes_name_the_key(key, value):
    with pytest.raises(ValueError, match=rf"^conditioning\.{key}: "):
        ConditioningConfig(**{key: value})


def test_online_encoding_without_encoder_path_names_encoder_path():
    with pytest.raises(ValueError, match=r"^conditioning\.encoder_path: must be set when conditioning\.online_encoding"):
        ConditioningConfig(online_encoding=True)


def test_online_encoding_needs_no_precached_key():
    # the precached-mode check of the next test does not apply when captions are encoded online: no error
    ConditioningConfig(online_encoding=True, encoder_path="all-MiniLM-L6-v2", precached_key=None, embed_dim=384)


def test_precached_mode_without_precached_key_is_an_error():
    with pytest.raises(ValueError, match=r"^conditioning\.precached_key: must be set when conditioning\.online_encoding is False"):
        ConditioningConfig(precached_key=None)


@pytest.mark.parametrize("key", ["embeddings_t5_xxl.npy", "dir/embeddings", ""])
def test_precached_key_must_be_a_bare_name(key):
    with pytest.raises(ValueError, match=r"^conditioning\.precached_key: "):
        ConditioningConfig(precached_key=key)


def test_omegaconf_structured_merge_validates_on_to_object():
    omegaconf = pytest.importorskip("omegaconf")
    schema = omegaconf.OmegaConf.structured(ConditioningConfig)
    # The seed's online-encoding block, with the MiniLM encoder filled in.
    online = omegaconf.OmegaConf.create(
        {"online_encoding": True, "encoder_path": "all-MiniLM-L6-v2", "embed_dim": 384, "token_length": 128, "drop_rate": 0.1}
    )
    cfg = omegaconf.OmegaConf.to_object(omegaconf.OmegaConf.merge(schema, online))
    assert isinstance(cfg, ConditioningConfig)  # to_object builds the dataclass, so __post_init__ checked it
    assert cfg.out_key == "t5_text"  # keys the block leaves out take the schema's defaults

    bad = omegaconf.OmegaConf.merge(schema, {"drop_rate": 1.5})
    with pytest.raises(ValueError, match=r"conditioning\.drop_rate: 1\.5 is not in \[0, 1\)"):
        omegaconf.OmegaConf.to_object(bad)

    with pytest.raises(omegaconf.errors.ConfigKeyError, match="embed_dims"):
        omegaconf.OmegaConf.merge(schema, {"embed_dims": 384})
