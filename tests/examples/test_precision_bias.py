"""examples/precision_bias.py: its error figures against closed-form cases, and a run on a tiny MiniLM stage."""
import importlib.util
import re

import pytest
import torch
from omegaconf import OmegaConf

from nemo_imagen.models.imagen import MegatronImagen
from tests.tiny import REPO, TINY_UNETS, run_example

spec = importlib.util.spec_from_file_location("precision_bias", REPO / "examples" / "precision_bias.py")
precision_bias = importlib.util.module_from_spec(spec)
spec.loader.exec_module(precision_bias)


def test_error_figures_tell_a_bias_from_noise():
    exact = [torch.tensor([3.0, 0, 0, 0]), torch.tensor([0, 4.0, 0, 0])]
    bias = [torch.tensor([0, 0, 1.0, 0])] * 2  # the same error twice
    ratio, cos, summed = precision_bias.error_figures(bias, exact)
    assert ratio == pytest.approx((1 / 3 + 1 / 4) / 2)
    assert cos == pytest.approx(1.0)
    assert summed == pytest.approx(2 / 5)  # |2 e| / |(3, 4)|
    noise = [torch.tensor([0, 0, 1.0, 0]), torch.tensor([0, 0, 0, 1.0])]  # orthogonal errors
    ratio, cos, summed = precision_bias.error_figures(noise, exact)
    assert cos == pytest.approx(0.0)
    assert summed == pytest.approx(2**0.5 / 5)


@pytest.mark.slow
def test_keeping_the_image_level_in_float32_shrinks_the_gradient_error(tmp_path):
    """On a tiny quickstart stage (random weights, the real MiniLM), bf16 autocast with the 64x64 level kept in
    float32 is closer to the float64 gradient than bf16 everywhere; a missing file is a one-line error."""
    cfg = OmegaConf.load(REPO / "examples" / "conf" / "quickstart.yaml")
    tiny = {**TINY_UNETS["base"], "channel_mult": [1, 2, 2], "attention_resolutions": [16]}
    cfg.merge_with_dotlist([f"model.unet.{key}={value}".replace(" ", "") for key, value in tiny.items()] + [
        "trainer.precision=32", "model.conditioning.online_encoding=True", "model.conditioning.token_length=8",
    ])
    model = MegatronImagen(cfg.model)
    for parameter in model.unet.parameters():  # no zero output layer: gradients must reach every level
        torch.nn.init.normal_(parameter, std=0.05) if parameter.ndim > 1 else None
    model.save_to(str(tmp_path / "tiny.nemo"))
    result = run_example("precision_bias.py", str(tmp_path / "tiny.nemo"), "--batches", "2", "--batch-size", "4")
    rows = dict(re.findall(r"^\s*(\[\]|\[64\])\s+([\d.]+)", result.stdout, re.M))
    assert set(rows) == {"[]", "[64]"}, result.stdout
    assert float(rows["[64]"]) < float(rows["[]"]) and float(rows["[]"]) > 0
    missing = run_example("precision_bias.py", str(tmp_path / "none.nemo"), check=False)
    assert missing.returncode == 2 and "error: checkpoint:" in missing.stderr
