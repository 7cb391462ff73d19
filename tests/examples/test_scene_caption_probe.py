"""examples/scene_caption_probe.py: its false captions read back by the scene-prompt parser, its preference figures
against hand-worked cases, and runs on a tiny MiniLM scenes stage that must not tell the captions apart when its
text path is cut, and must when it is not."""
import importlib.util
import re

import pytest
import torch
from omegaconf import OmegaConf

from nemo_imagen.data.scene_checker import parse_scene_prompt
from nemo_imagen.data.scenes import scene_sample
from nemo_imagen.models.imagen import MegatronImagen
from tests.tiny import REPO, TINY_UNETS, run_example

spec = importlib.util.spec_from_file_location("scene_caption_probe", REPO / "examples" / "scene_caption_probe.py")
probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(probe)

OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}


def test_false_captions_change_only_what_they_say():
    for index in range(0, 120, 2):
        sample = scene_sample(0, "val", index)
        own = parse_scene_prompt(sample.caption)
        reversed_ = parse_scene_prompt(probe.relation_reversed(sample))
        assert (reversed_.subject, reversed_.other) == (own.subject, own.other)
        assert reversed_.relation == OPPOSITE[own.relation]
        exchanged = parse_scene_prompt(probe.colours_exchanged(sample))
        assert exchanged.subject == (own.other[0], own.subject[1])
        assert exchanged.other == (own.subject[0], own.other[1])
        assert exchanged.relation == own.relation
        # the framing ("a photo of ...") and the suffix stay: only the core changes
        prefix = sample.caption[: sample.caption.index(sample.objects[sample.subject].phrase())]
        assert probe.relation_reversed(sample).startswith(prefix) and probe.colours_exchanged(sample).startswith(prefix)


def test_preference_counts_ties_as_half():
    share, gap = probe.preference(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([2.0, 2.0, 1.0, 5.0]))
    assert share == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert gap == pytest.approx((1.0 + 0.0 - 2 / 3 + 1 / 4) / 4)


def _rows(stdout):
    """{sigma: [share, gap, share, gap]} from the printed table's rows (five numbers each)."""
    number = r"[-+]?\d+\.\d+(?:e[-+]\d+)?"
    rows = re.findall(rf"^\s*({number})((?:\s+{number}){{4}})\s*$", stdout, re.M)
    return {float(sigma): [float(v) for v in values.split()] for sigma, values in rows}


@pytest.mark.slow
def test_a_stage_without_text_path_does_not_tell_the_captions_apart(tmp_path):
    cfg = OmegaConf.load(REPO / "examples" / "conf" / "quickstart-scenes.yaml")
    tiny = {**TINY_UNETS["base"], "channel_mult": [1, 2, 2], "attention_resolutions": [16]}
    cfg.merge_with_dotlist([f"model.unet.{key}={value}".replace(" ", "") for key, value in tiny.items()] + [
        "trainer.precision=32", "model.conditioning.online_encoding=True", "model.ema.enable=False",
    ])
    model = MegatronImagen(cfg.model)
    torch.manual_seed(0)
    for parameter in model.unet.parameters():  # no zero output layers, so that the text reaches the output
        torch.nn.init.normal_(parameter, std=0.05) if parameter.ndim > 1 else None
    model.save_to(str(tmp_path / "reads_text.nemo"))
    with torch.no_grad():  # the pooled vector and the attention context no longer depend on the caption
        for layer in (model.unet.text_pool.mlp[-1], model.unet.text_to_cond):
            layer.weight.zero_()
            layer.bias.zero_()
    model.save_to(str(tmp_path / "text_cut.nemo"))

    args = ["--scenes", "6", "--repeats", "1"]
    cut = _rows(run_example("scene_caption_probe.py", str(tmp_path / "text_cut.nemo"), *args).stdout)
    assert sorted(cut) == list(probe.SIGMAS)
    assert all(values == [0.5, 0.0, 0.5, 0.0] for values in cut.values()), cut
    reads = _rows(run_example("scene_caption_probe.py", str(tmp_path / "reads_text.nemo"), *args).stdout)
    assert any(values[1] != 0.0 and values[3] != 0.0 for values in reads.values()), reads

    missing = run_example("scene_caption_probe.py", str(tmp_path / "none.nemo"), check=False)
    assert missing.returncode == 2 and "error: checkpoint:" in missing.stderr
