"""Missing, empty, truncated, foreign, wrong-stage and mismatched checkpoints give a clear error naming the config
key and the file, never a model with random weights. Real files: a tiny model's .nemo and a torch .ckpt."""
import shutil

import pytest
import torch

from nemo_imagen.models.checkpoint_checks import check_checkpoint_file, check_stage, check_state_dict
from nemo_imagen.models.config import ConfigError
from nemo_imagen.models.imagen import MegatronImagen
from omegaconf import OmegaConf

from tests.tiny import REPO, TINY_CONDITIONING, TINY_UNET

KEY = "base_ckpt"


def tiny_model_cfg(**changes):
    cfg = OmegaConf.load(REPO / "examples/conf/base64-500m-edm.yaml").model
    cfg.precision = 32
    cfg.unet = OmegaConf.merge(cfg.unet, TINY_UNET)
    cfg.conditioning = OmegaConf.merge(cfg.conditioning, TINY_CONDITIONING)
    cfg.data.synthetic_data = True
    for key, value in changes.items():
        OmegaConf.update(cfg, key, value)
    return cfg


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ckpts")
    model = MegatronImagen(tiny_model_cfg())
    nemo = directory / "tiny.nemo"
    model.save_to(str(nemo))
    ckpt = directory / "tiny.ckpt"
    torch.save({"state_dict": model.state_dict(), "global_step": 3}, ckpt)
    return model, nemo, ckpt


def truncated_copy(path, tmp_path, keep):
    data = path.read_bytes()
    out = tmp_path / f"cut-{keep}{path.suffix}"
    out.write_bytes(data[: int(len(data) * keep)] if isinstance(keep, float) else data[:keep])
    return out


def test_complete_files_pass(saved):
    _, nemo, ckpt = saved
    assert check_checkpoint_file(nemo, KEY) == nemo
    assert check_checkpoint_file(ckpt, KEY) == ckpt


@pytest.mark.parametrize("keep", [0.99, 0.5, 0.02, 700])
def test_truncated_files_are_rejected(saved, tmp_path, keep):
    _, nemo, ckpt = saved
    for path in (nemo, ckpt):
        cut = truncated_copy(path, tmp_path, keep)
        with pytest.raises(ConfigError, match=rf"^{KEY}: .*{cut.name}.*(truncated|corrupt|not a complete)"):
            check_checkpoint_file(cut, KEY)


def test_missing_empty_foreign_files(saved, tmp_path):
    _, nemo, _ = saved
    with pytest.raises(FileNotFoundError, match=rf"^{KEY}: .*nowhere.nemo.* does not exist"):
        check_checkpoint_file(tmp_path / "nowhere.nemo", KEY)
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(ConfigError, match="empty"):
        check_checkpoint_file(tmp_path / "empty.ckpt", KEY)
    shutil.copy(nemo, tmp_path / "model.pt")
    with pytest.raises(ConfigError, match=r"must end in \.nemo or \.ckpt"):
        check_checkpoint_file(tmp_path / "model.pt", KEY)
    (tmp_path / "text.nemo").write_text("not an archive\n" * 100)
    with pytest.raises(ConfigError, match="not a readable .nemo"):
        check_checkpoint_file(tmp_path / "text.nemo", KEY)


def test_weights_of_another_unet_size_are_named(saved):
    model, _, ckpt = saved
    other = MegatronImagen(tiny_model_cfg(**{"unet.channel_mult": [1, 2, 2]}))
    with pytest.raises(ConfigError, match=rf"^{KEY}: the weights in .*tiny.ckpt.* do not fit .*missing.*wrong shape"):
        check_state_dict(other, torch.load(ckpt, weights_only=False)["state_dict"], KEY, ckpt)
    state = dict(model.state_dict())
    dropped = sorted(state)[0]
    del state[dropped]
    with pytest.raises(ConfigError, match=f"1 missing: {dropped}"):
        check_state_dict(model, state, KEY)
    check_state_dict(model, model.state_dict(), KEY)  # the model's own weights fit


def test_wrong_stage_is_named(saved):
    model, nemo, _ = saved
    restored = MegatronImagen.restore_from(str(check_checkpoint_file(nemo, KEY)), map_location="cpu")
    check_stage(restored, KEY, unet_type="base", image_size=64)
    with pytest.raises(ConfigError, match=rf"^{KEY}: expected a stage that makes 256x256 images, .* 64x64"):
        check_stage(restored, KEY, image_size=256)
    with pytest.raises(ConfigError, match=rf"^{KEY}: expected a 'sr' stage, but the checkpoint holds a 'base' stage"):
        check_stage(restored, KEY, unet_type="sr")
