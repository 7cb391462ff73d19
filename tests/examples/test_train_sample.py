"""The README's path, run as a user runs it: train a documented config (tiny overrides), resume, sample."""
import glob

import pytest
import torch

from tests.tiny import run_example as run
from tests.tiny import tiny_overrides


def checkpoint_steps(run_dir):
    return sorted(torch.load(path, map_location="cpu", weights_only=False)["global_step"]
                  for path in glob.glob(f"{run_dir}/checkpoints/*last.ckpt"))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """base64-500m-edm with a tiny UNet and the MiniLM encoder named for prompts, trained 4 steps, then resumed."""
    exp_dir = tmp_path_factory.mktemp("exp")
    extra = ["model.conditioning.embed_dim=384", "model.conditioning.encoder_path=all-MiniLM-L6-v2",
             "model.sample_log.prompts=[a red circle]"]
    first = run("train.py", "--config-name", "base64-500m-edm", *tiny_overrides(exp_dir, 4, extra))
    run_dir = exp_dir / "imagen-base64-500m-edm"
    steps_after_first = checkpoint_steps(run_dir)
    second = run("train.py", "--config-name", "base64-500m-edm",
                 *tiny_overrides(exp_dir, 6, extra + ["exp_manager.resume_if_exists=True"]))
    return run_dir, steps_after_first, first, second


def test_training_writes_events_checkpoints_and_nemo(trained_run):
    run_dir, steps_after_first, _, _ = trained_run
    assert steps_after_first == [4]
    assert glob.glob(f"{run_dir}/**/events.out.tfevents.*", recursive=True)
    assert glob.glob(f"{run_dir}/checkpoints/*.nemo")


def test_resume_continues_from_saved_step(trained_run):
    run_dir, _, _, second = trained_run
    assert "Restoring states from the checkpoint" in second.stdout + second.stderr
    assert checkpoint_steps(run_dir) == [6]


def test_tensorboard_has_loss_and_sample_grid(trained_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _, _, _ = trained_run
    event_files = glob.glob(f"{run_dir}/**/events.out.tfevents.*", recursive=True)
    assert len(event_files) == 2  # the first run and the resumed one
    images, pairs = set(), []
    for events in event_files:
        accumulator = EventAccumulator(events, size_guidance={"images": 0, "scalars": 0})
        accumulator.Reload()
        assert {"reduced_train_loss", "lr", "global_step", "consumed_samples"} <= set(accumulator.Tags()["scalars"])
        images |= set(accumulator.Tags()["images"])
        consumed = {event.step: event.value for event in accumulator.Scalars("consumed_samples")}
        pairs += [(consumed[event.step], event.value) for event in accumulator.Scalars("global_step")]
    # global batch 4; logged during step k+1 (global_step k), whose batch completes 4 (k + 1) samples
    assert sorted(global_step for _, global_step in pairs) == [0, 1, 2, 3, 4, 5]
    assert all(value == 4 * (global_step + 1) for value, global_step in pairs), pairs
    assert "samples" in images


def test_sample_script_writes_pngs_and_grid(trained_run, tmp_path):
    from PIL import Image

    run_dir, _, _, _ = trained_run
    nemo = sorted(glob.glob(f"{run_dir}/checkpoints/*.nemo"))[-1]
    out = tmp_path / "samples"
    run("sample.py", f"base_ckpt={nemo}", "prompts=[a red circle,a blue square]", "num_images_per_prompt=2",
        f"output_dir={out}", "samplings=[{sampler: dpmpp, steps: 3, cfg: 3.0}]")
    names = sorted(path.name for path in out.glob("*.png"))
    assert names == ["00000_00.png", "00000_01.png", "00001_00.png", "00001_01.png", "grid.png"]
    assert Image.open(out / "00001_01.png").size == (64, 64)
    grid = Image.open(out / "grid.png")
    assert grid.size == (2 * 64 + 3 * 2, 2 * 64 + 3 * 2)


def test_bad_key_is_named_without_a_stack_trace(tmp_path):
    result = run("train.py", "--config-name", "base64-500m", *tiny_overrides(tmp_path, 1),
                 "+model.unet.attention_typo=fused", check=False)
    assert result.returncode == 2
    assert "attention_typo" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("config, documented", [("base64-500m", 524e6), ("base64-2b", 2100e6), ("sr256-400m", 429e6),
                                                ("sr256-600m", 646e6), ("sr1024-400m", 427e6)])
def test_model_summary_matches_documented_size(config, documented):
    out = run("model_summary.py", "--config-name", config).stdout
    count = int(next(line for line in out.splitlines() if line.startswith("unet_params:")).split(":")[1])
    assert abs(count - documented) / documented < 0.03, count
