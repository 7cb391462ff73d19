"""A checkpoint knows how it should be sampled: its `model.sample_log` (sampler, steps, cfg, thresholding) travels
in the `.nemo`, and sample.py / the cascade pipeline / eval_fid_clip.py use it for every stage whose `samplings`
entry (or key) the user did not set."""
import importlib.util

import pytest
import torch
from omegaconf import OmegaConf

from nemo_imagen.models.imagen import MegatronImagen
from nemo_imagen.models.pipeline import ImagenPipeline, StageSampling, load_stage, sample_config_from
from tests.tiny import REPO, TINY_CONDITIONING, TINY_UNETS, run_example

BASE_OWN = {"sampler": "dpmpp", "steps": 3, "cfg": 1.5, "thresholding": "static"}
SR_OWN = {"sampler": "ddpm", "steps": 2, "cfg": 1.0, "thresholding": "none"}


def tiny_stage(config, unet_type, sample_log, conditioning=TINY_CONDITIONING, encoder_path=None):
    cfg = OmegaConf.load(REPO / "examples" / "conf" / f"{config}.yaml").model
    cfg.precision = 32
    cfg.unet = OmegaConf.merge(cfg.unet, TINY_UNETS[unet_type])
    cfg.conditioning = OmegaConf.merge(cfg.conditioning, conditioning)
    cfg.conditioning.encoder_path = encoder_path
    cfg.conditioning.online_encoding = encoder_path is not None
    cfg.conditioning.precached_key = cfg.conditioning.get("precached_key") or "embeddings"
    cfg.data.synthetic_data = True
    cfg.sample_log = OmegaConf.merge(cfg.sample_log, sample_log)
    return MegatronImagen(cfg).eval()


@pytest.fixture(scope="module")
def base_nemo(tmp_path_factory):
    """A tiny base stage's .nemo whose sample_log says dpmpp, 3 steps, cfg 1.5, static thresholding."""
    path = tmp_path_factory.mktemp("own") / "base.nemo"
    tiny_stage("base64-500m-edm", "base", BASE_OWN).save_to(str(path))
    return path


@pytest.fixture(scope="module")
def base(base_nemo):
    return load_stage(str(base_nemo), torch.device("cpu"))


@pytest.fixture(scope="module")
def sr256():
    return tiny_stage("quickstart-sr256", "sr", SR_OWN)


def spy(monkeypatch, pipeline):
    """Records each stage's sampling keywords; the stages return blank images instead of sampling."""
    calls = []
    for index, stage in enumerate(pipeline.stages):
        def fake_sample(text_embed, text_mask, *, lowres=None, index=index, stage=stage, **kwargs):
            calls.append((index, kwargs))
            side = stage.typed_cfg.unet.image_size
            return torch.zeros(text_embed.shape[0], 3, side, side)

        monkeypatch.setattr(stage, "sample", fake_sample)
    cond = TINY_CONDITIONING
    monkeypatch.setattr(pipeline, "embed_prompts", lambda prompts: [
        (torch.zeros(len(prompts), cond["token_length"], cond["embed_dim"]),
         torch.ones(len(prompts), cond["token_length"], dtype=torch.bool))] * len(pipeline.stages))
    return calls


def used(kwargs):
    return {"sampler": kwargs["sampler"], "steps": kwargs["steps"], "cfg": kwargs["guidance_scale"],
            "thresholding": kwargs["thresholding"]}


def test_the_sample_log_travels_in_the_nemo(base):
    own = base.typed_cfg.sample_log
    assert {key: getattr(own, key) for key in BASE_OWN} == BASE_OWN


def test_without_samplings_the_pipeline_samples_as_the_checkpoint_says(base_nemo, monkeypatch):
    """sample.yaml's defaults (samplings null, thresholding null), loaded as sample.py does."""
    cfg = OmegaConf.load(REPO / "examples/conf/sample.yaml")
    cfg.base_ckpt, cfg.device = str(base_nemo), "cpu"
    cfg = sample_config_from(cfg)
    assert cfg.samplings is None and cfg.thresholding is None
    pipeline = ImagenPipeline.from_config(cfg)
    (sampling, line), = pipeline.stage_samplings(cfg.samplings, cfg.thresholding)
    assert line == "base_ckpt: sampler dpmpp, steps 3, cfg 1.5, thresholding static (from the checkpoint's model.sample_log)"
    calls = spy(monkeypatch, pipeline)
    pipeline(["a red circle"], cfg.samplings, thresholding=cfg.thresholding, progress=False)
    assert [used(kwargs) for _, kwargs in calls] == [BASE_OWN]
    assert calls[0][1]["noise_cond_aug_sigma"] is None
    for empty in ([], [StageSampling()]):  # an empty list, or an entry that sets nothing, is the same
        calls.clear()
        pipeline(["a red circle"], empty, progress=False)
        assert [used(kwargs) for _, kwargs in calls] == [BASE_OWN]


def test_a_given_entry_wins_for_its_stage(base, monkeypatch):
    pipeline = ImagenPipeline([base])
    calls = spy(monkeypatch, pipeline)
    pipeline(["x"], [StageSampling("edm", 2, 3.0)], progress=False)
    assert used(calls[-1][1]) == {"sampler": "edm", "steps": 2, "cfg": 3.0, "thresholding": "static"}
    pipeline(["x"], [StageSampling("edm", 2, 3.0)], thresholding="dynamic", progress=False)
    assert used(calls[-1][1])["thresholding"] == "dynamic"
    pipeline(["x"], [StageSampling(steps=7, thresholding="none")], thresholding="dynamic", progress=False)
    assert used(calls[-1][1]) == {"sampler": "dpmpp", "steps": 7, "cfg": 1.5, "thresholding": "none"}
    (_, line), = pipeline.stage_samplings([StageSampling("edm", 2, 3.0)])
    assert line == ("base_ckpt: sampler edm, steps 2, cfg 3, thresholding static "
                    "(sampler, steps, cfg from the command line; thresholding from the checkpoint)")
    (_, line), = pipeline.stage_samplings([StageSampling("edm", 2, 3.0)], "none")
    assert line.endswith("thresholding none (from the command line)")


def test_a_cascade_with_one_entry_samples_the_next_stage_as_its_checkpoint_says(base, sr256, monkeypatch):
    pipeline = ImagenPipeline([base, sr256])
    calls = spy(monkeypatch, pipeline)
    images = pipeline(["x", "y"], [StageSampling("edm", 4, 2.0, thresholding="dynamic")], progress=False)
    assert images.shape == (2, 3, 256, 256)
    assert [(index, used(kwargs)) for index, kwargs in calls] == [
        (0, {"sampler": "edm", "steps": 4, "cfg": 2.0, "thresholding": "dynamic"}), (1, SR_OWN)]
    lines = [line for _, line in pipeline.stage_samplings([StageSampling("edm", 4, 2.0)])]
    assert lines[1] == "sr256_ckpt: sampler ddpm, steps 2, cfg 1, thresholding none (from the checkpoint's model.sample_log)"
    # noise_cond_aug_sigma keeps its own default: null unless an entry gives it
    calls.clear()
    pipeline(["x"], [StageSampling(), StageSampling(noise_cond_aug_sigma=0.3)], progress=False)
    assert [kwargs["noise_cond_aug_sigma"] for _, kwargs in calls] == [None, 0.3]
    assert used(calls[1][1]) == SR_OWN


def test_eval_fid_clip_falls_back_the_same_way(base, sr256, monkeypatch):
    spec = importlib.util.spec_from_file_location("eval_fid_clip", REPO / "examples" / "eval_fid_clip.py")
    evaluator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(evaluator)
    keys = {"base_ckpt": "b.nemo", "captions": ["c.txt"], "fid": {"reference_images": ["r"]}, "clip": {"checkpoint": "k"},
            "target_resolution": 256, "samplings": [], "thresholding": None}
    cfg = evaluator.eval_config_from(OmegaConf.create(keys))
    samplings = evaluator.stage_samplings(cfg, 6.0)
    assert samplings == [StageSampling(cfg=6.0), StageSampling()]  # the base gets the guidance scale, no more
    pipeline = ImagenPipeline([base, sr256])
    calls = spy(monkeypatch, pipeline)
    pipeline(["x"], samplings, thresholding=cfg.thresholding, progress=False)
    assert [used(kwargs) for _, kwargs in calls] == [{**BASE_OWN, "cfg": 6.0}, SR_OWN]


def test_sample_script_prints_and_uses_the_checkpoints_settings(tmp_path):
    """examples/sample.py with no samplings=: the checkpoint's own settings, and a line that says so."""
    minilm = {"embed_dim": 384, "token_length": 8}
    nemo = tmp_path / "base.nemo"
    tiny_stage("base64-500m-edm", "base", {**BASE_OWN, "steps": 1}, minilm, "all-MiniLM-L6-v2").save_to(str(nemo))
    result = run_example("sample.py", f"base_ckpt={nemo}", "prompts=[a red circle]", "num_images_per_prompt=1",
                         f"output_dir={tmp_path / 'out'}", "device=cpu")
    assert ("base_ckpt: sampler dpmpp, steps 1, cfg 1.5, thresholding static (from the checkpoint's "
            "model.sample_log)") in result.stdout
    assert (tmp_path / "out" / "00000_00.png").is_file()
