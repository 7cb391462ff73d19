"""T5-family loading (encoder only), the factory's config checks, and load errors, on a tiny random T5."""
import shutil

import pytest
import torch
import transformers

from nemo_imagen.text import ConditioningConfig, TextEncoder, build_text_encoder

CAPTIONS = ["a red circle", "a large blue star under the sky next to a tree", "a small green hexagon"]


@pytest.fixture(scope="module")
def t5_encoder(tiny_t5):
    directory, _ = tiny_t5
    return TextEncoder.from_path(str(directory))


def test_full_t5_checkpoint_loads_as_encoder_only(t5_encoder, tiny_t5):
    _, full_model = tiny_t5
    assert isinstance(t5_encoder.model, transformers.T5EncoderModel)
    assert not any("decoder" in name for name, _ in t5_encoder.named_parameters())
    assert t5_encoder.embed_dim == 32 and t5_encoder.max_tokens is None  # relative positions: no limit
    loaded = t5_encoder.model.state_dict()
    saved = {k: v for k, v in full_model.state_dict().items() if k.startswith(("encoder.", "shared."))}
    assert loaded.keys() == saved.keys()
    for name, tensor in saved.items():
        assert torch.equal(loaded[name], tensor), name


def test_t5_output_equals_transformers_t5_encoder_model(t5_encoder, tiny_t5):
    directory, full_model = tiny_t5
    embed, mask = t5_encoder.encode(CAPTIONS, 24)

    tokenizer = transformers.T5Tokenizer.from_pretrained(directory)
    reference_model = transformers.T5EncoderModel.from_pretrained(directory).eval()
    batch = tokenizer(CAPTIONS, padding="max_length", max_length=24, truncation=True, return_tensors="pt")
    with torch.no_grad():
        reference = reference_model(**batch).last_hidden_state
        from_full_model = full_model.encoder(**batch).last_hidden_state
    reference = reference * batch["attention_mask"][..., None]
    assert torch.equal(mask, batch["attention_mask"].bool())
    assert batch["input_ids"][0, mask[0].sum() - 1].item() == tokenizer.eos_token_id
    torch.testing.assert_close(embed, reference, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(embed[mask], from_full_model[mask], atol=1e-6, rtol=1e-5)
    assert embed[mask].abs().amax() > 0.1


def test_build_text_encoder_accepts_matching_width(tiny_t5):
    directory, _ = tiny_t5
    cfg = ConditioningConfig(embed_dim=32, token_length=16, online_encoding=True, encoder_path=str(directory))
    encoder = build_text_encoder(cfg, batch_size=2)
    embed, mask = encoder.encode(CAPTIONS, cfg.token_length)  # 3 captions in batches of 2
    assert embed.shape == (3, 16, 32) and encoder.name == str(directory)
    assert mask.sum(1).tolist() == [int(n) for n in encoder.tokenizer(CAPTIONS, truncation=True, max_length=16, return_length=True)["length"]]


def test_build_text_encoder_width_mismatch_names_key_and_both_sizes(tiny_t5):
    directory, _ = tiny_t5
    cfg = ConditioningConfig(embed_dim=1024, online_encoding=True, encoder_path=str(directory))
    with pytest.raises(ValueError, match=r"^conditioning\.embed_dim: 1024 does not match the hidden size 32 .*embed_dim: 32$"):
        build_text_encoder(cfg)


def test_build_text_encoder_without_encoder_path_names_the_key():
    with pytest.raises(ValueError, match=r"^conditioning\.encoder_path: is not set"):
        build_text_encoder(ConditioningConfig())


def test_missing_path_is_a_clear_error(tmp_path):
    missing = tmp_path / "no_such_encoder"
    with pytest.raises(FileNotFoundError, match=rf"text encoder path '{missing}' does not exist") as info:
        TextEncoder.from_path(str(missing))
    assert info.value.__cause__ is None and info.value.__context__ is None


def test_directory_without_config_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"'{tmp_path}' has no config\.json"):
        TextEncoder.from_path(str(tmp_path))


@pytest.mark.parametrize(
    "removed,message",
    [(["model.safetensors"], "has no weights"), (["spiece.model", "tokenizer_config.json"], "has no tokenizer")],
)
def test_incomplete_checkpoint_is_a_clear_error(tiny_t5, tmp_path, removed, message):
    directory, _ = tiny_t5
    copy = tmp_path / "copy"
    shutil.copytree(directory, copy)
    for name in removed:
        (copy / name).unlink()
    with pytest.raises(FileNotFoundError, match=rf"text encoder path '{copy}' {message}"):
        TextEncoder.from_path(str(copy))


def test_unreadable_config_is_a_clear_error(tiny_t5, tmp_path):
    directory, _ = tiny_t5
    copy = tmp_path / "copy"
    shutil.copytree(directory, copy)
    (copy / "config.json").write_text('{"model_type": "no_such_architecture"}')
    with pytest.raises(ValueError, match=rf"text encoder path '{copy}' could not be loaded: ValueError: .*no_such_architecture"):
        TextEncoder.from_path(str(copy))
