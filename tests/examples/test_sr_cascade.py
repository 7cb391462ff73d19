"""Super-resolution stages end to end: train sr256 on the demo shards' 64/256 pyramid, export its .ckpt to
.nemo and ONNX, and chain base -> sr256 -> sr1024 through examples/sample.py to 1024x1024 PNGs."""
import glob
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from nemo_imagen.data.demo import make_demo_dataset
from nemo_imagen.models.export import onnx_relative_error
from nemo_imagen.models.imagen import MegatronImagen
from nemo_imagen.models.pipeline import ImagenPipeline, StageSampling, load_stage, model_from_lightning_checkpoint
from tests.tiny import REPO, TINY_UNETS, run_example, tensorboard_scalars, tiny_overrides

pytestmark = pytest.mark.slow  # trains an SR stage and runs the cascade: minutes on 2 cores

MINILM = ["model.conditioning.embed_dim=384", "model.conditioning.token_length=8",
          "model.conditioning.online_encoding=True", "model.conditioning.encoder_path=all-MiniLM-L6-v2"]


@pytest.fixture(scope="module")
def sr_run(tmp_path_factory):
    """sr256-600m-edm (Efficient UNet) with a tiny UNet and MiniLM text, 4 steps on 256x256 demo shards."""
    root = tmp_path_factory.mktemp("sr")
    shards = make_demo_dataset(str(root / "demo"), num_samples=24, samples_per_shard=24, num_val_samples=4, image_size=256)
    extra = MINILM + [f"model.data.train.dataset_path=[{shards['train'][0]}]", "exp_manager.resume_if_exists=False",
                      "model.sample_log.images_per_prompt=2"]
    result = run_example("train.py", "--config-name", "sr256-600m-edm",
                         *tiny_overrides(root / "exp", 4, extra, tiny_text=False, synthetic=False, unet_type="sr"))
    return root, result


def test_sr_stage_trains_on_the_demo_pyramid_and_logs_upscaled_samples(sr_run):
    root, result = sr_run
    scalars = tensorboard_scalars(root / "exp")
    losses = [value for _, value in scalars["reduced_train_loss"]]
    assert len(losses) == 4 and all(np.isfinite(losses))
    grids = glob.glob(f"{root}/exp/**/events.out.tfevents.*", recursive=True)
    assert grids and "samples: " in result.stdout
    grid = np.asarray(Image.open(result.stdout.split("samples: ")[1].split()[0]))
    # rows of [bicubic input, sample, sample] at 256 with 2-pixel padding
    assert grid.shape[1] == 3 * 256 + 4 * 2


def test_ckpt_exports_to_nemo_with_ema_weights_and_onnx_matches(sr_run, tmp_path):
    root, _ = sr_run
    ckpt = sorted(glob.glob(f"{root}/exp/**/checkpoints/*last.ckpt", recursive=True))[0]
    nemo, onnx = tmp_path / "sr256.nemo", tmp_path / "sr256_unet.onnx"
    result = run_example("export.py", "--ckpt", ckpt, "--nemo", str(nemo), "--onnx", str(onnx))
    reported = float(re.search(r"max relative difference ([0-9.e+-]+)", result.stdout).group(1))
    assert reported < 1e-4

    trained = model_from_lightning_checkpoint(Path(ckpt))
    exported = load_stage(str(nemo), torch.device("cpu"))
    assert exported.ema_unet is None  # the EMA weights became the only UNet
    generator = torch.Generator().manual_seed(0)
    x, lowres = torch.randn(2, 3, 256, 256, generator=generator), torch.rand(2, 3, 64, 64, generator=generator) * 2 - 1
    text, mask = torch.randn(2, 8, 384, generator=generator), torch.tensor([[True] * 3 + [False] * 5] * 2)
    args = (x, torch.tensor([0.1, -0.4]), text, mask, lowres, torch.tensor([-1.5, -1.5]))
    with torch.no_grad():
        assert torch.equal(exported.unet.eval()(*args), trained.ema_unet.eval()(*args))
        assert not torch.equal(trained.unet.eval()(*args), trained.ema_unet(*args))
    assert onnx_relative_error(exported, str(onnx), batch_size=1) < 1e-4


def stage_from_config(config, unet_type, path, extra=()):
    """Builds a tiny stage of examples/conf/{config}.yaml with random weights and saves it as a .nemo."""
    cfg = OmegaConf.load(REPO / "examples" / "conf" / f"{config}.yaml")
    overrides = [f"model.unet.{key}={value}".replace(" ", "") for key, value in TINY_UNETS[unet_type].items()]
    cfg.merge_with_dotlist([*overrides, *MINILM, "trainer.precision=32", "model.inductor=False", *extra])
    model = MegatronImagen(cfg.model)
    for parameter in model.unet.parameters():  # no zero output layer: the chain must carry signal
        torch.nn.init.normal_(parameter, std=0.02) if parameter.ndim > 1 else None
    model.ema_unet.load_state_dict(model.unet.state_dict())
    model.save_to(str(path))
    return path


@pytest.fixture(scope="module")
def cascade(sr_run, tmp_path_factory):
    directory = tmp_path_factory.mktemp("cascade")
    base = stage_from_config("base64-500m-edm", "base", directory / "base.nemo")
    sr1024 = stage_from_config("sr1024-400m", "sr", directory / "sr1024.nemo")
    sr256 = sorted(glob.glob(f"{sr_run[0]}/exp/**/checkpoints/*last.ckpt", recursive=True))[0]
    return base, sr256, sr1024


def test_sample_script_chains_base_sr256_sr1024_into_1024_pngs(cascade, tmp_path):
    base, sr256, sr1024 = cascade
    run_example("sample.py", f"base_ckpt={base}", f"sr256_ckpt='{sr256}'", f"sr1024_ckpt={sr1024}",
                "target_resolution=1024", "prompts=[a red circle]", "num_images_per_prompt=1", f"output_dir={tmp_path}",
                "samplings=[{sampler: dpmpp, steps: 2, cfg: 2.0}, {sampler: dpmpp, steps: 2, cfg: 2.0},"
                " {sampler: dpmpp, steps: 1, cfg: 1.0}]")
    image = np.asarray(Image.open(tmp_path / "00000_00.png"))
    assert image.shape == (1024, 1024, 3) and image.std() > 0


def test_pipeline_equals_the_stages_run_by_hand(cascade):
    """The pipeline embeds once and feeds each stage's output to the next with one generator per batch."""
    base_path, sr256_path, _ = cascade
    base, sr256 = load_stage(str(base_path), torch.device("cpu")), load_stage(str(sr256_path), torch.device("cpu"))
    pipeline = ImagenPipeline([base, sr256])
    samplings = [StageSampling("dpmpp", 2, 3.0), StageSampling("edm", 1, 1.5, noise_cond_aug_sigma=0.2)]
    images = pipeline(["a blue square", "a red circle"], samplings, batch_size=2, seed=7)
    embed, mask = base.encode_prompts(["a blue square", "a red circle"])
    generator = torch.Generator().manual_seed(7)
    low = base.sample(embed, mask, sampler="dpmpp", steps=2, guidance_scale=3.0, generator=generator)
    high = sr256.sample(embed, mask, lowres=low, noise_cond_aug_sigma=0.2, sampler="edm", steps=1, guidance_scale=1.5,
                        generator=generator)
    assert images.shape == (2, 3, 256, 256)
    torch.testing.assert_close(images, high, rtol=0, atol=1e-6)


def test_wrong_or_missing_stage_files_are_named(cascade, tmp_path):
    base, sr256, _ = cascade
    swapped = run_example("sample.py", f"base_ckpt='{sr256}'", "prompts=[x]", check=False)
    assert swapped.returncode == 2 and "base_ckpt: expected a 'base' stage" in swapped.stderr + swapped.stdout
    missing = run_example("sample.py", f"base_ckpt={base}", "target_resolution=256", "prompts=[x]", check=False)
    assert missing.returncode == 2 and "sr256_ckpt:" in missing.stderr + missing.stdout
    truncated = tmp_path / "cut.ckpt"
    truncated.write_bytes(Path(sr256).read_bytes()[:5000])
    cut = run_example("sample.py", f"base_ckpt={base}", f"sr256_ckpt={truncated}", "target_resolution=256",
                      "prompts=[x]", check=False)
    assert cut.returncode == 2 and "sr256_ckpt" in cut.stderr + cut.stdout and "Traceback" not in cut.stderr


def test_evaluate_sr_reports_psnr_of_the_stage_and_of_bicubic(sr_run):
    """The bicubic figure is recomputed here from the shard with numpy (PIL's bicubic downsample as in training,
    torch's bicubic upsample as the UNet's input): the script must report the same number."""
    import io
    import tarfile

    root, result = sr_run
    nemo = result.stdout.split("model: ")[1].split()[0]
    shard = root / "demo" / "val-000000.tar"
    out = run_example("evaluate_sr.py", "--ckpt", nemo, "--shards", str(shard), "--num_images", "4", "--steps", "2",
                      "--batch_size", "2", "--thresholding", "dynamic").stdout
    reported_model = float(re.search(r"psnr model: ([0-9.]+) dB", out).group(1))
    reported_bicubic = float(re.search(r"psnr bicubic: ([0-9.]+) dB", out).group(1))
    with tarfile.open(shard) as tar:
        jpgs = [tar.extractfile(member).read() for member in tar.getmembers() if member.name.endswith(".jpg")][:4]
    values = []
    for data in jpgs:
        image = Image.open(io.BytesIO(data)).convert("RGB")
        truth = np.asarray(image, dtype=np.float64) / 255.0
        low = torch.from_numpy(np.asarray(image.resize((64, 64), Image.BICUBIC), dtype=np.float32) / 127.5 - 1)
        up = torch.nn.functional.interpolate(low.permute(2, 0, 1)[None], size=(256, 256), mode="bicubic")
        up = (up[0].permute(1, 2, 0).clamp(-1, 1).double().numpy() + 1) / 2
        values.append(10 * np.log10(1.0 / np.mean((up - truth) ** 2)))
    assert reported_bicubic == pytest.approx(np.mean(values), abs=0.006)  # printed with 2 decimals
    assert 5 < reported_model < 60 and "images: 4 (64 -> 256)" in out
