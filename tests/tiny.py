"""Shared by the tests: tiny-model overrides of the documented configs (so a CPU step is fast), and running an
example script as a user would."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY_UNET = {
    "embed_dim": 32,
    "channel_mult": [1, 2],
    "num_res_blocks": 1,
    "attention_resolutions": [32],
    "per_head_channels": 16,
    "cond_dim": 32,
}
# Super-resolution stages keep their documented image sizes (256, 1024; trained on [64, 256] pairs), so a
# tiny UNet needs more levels to reach a resolution where attention is cheap.
TINY_UNETS = {
    "base": TINY_UNET,
    "sr-unet": {**TINY_UNET, "channel_mult": [1, 1, 2, 2]},
    "sr": {
        "embed_dim": 32,
        "channel_mult": [1, 2, 2],
        "num_resblocks": [1, 1, 2],
        "atnn_enabled_at": [0, 0, 1],
        "per_head_channels": 16,
        "cond_dim": 32,
    },
}
TINY_CONDITIONING = {"embed_dim": 16, "token_length": 8}


def tiny_overrides(exp_dir, max_steps=4, extra=(), tiny_text=True, synthetic=True, unet_type="base"):
    """Hydra command-line overrides turning a documented config into a seconds-long CPU run.
    tiny_text: 16-dim random text embeddings; synthetic: random data instead of the config's shards;
    unet_type: the config's `model.unet_type` (picks the tiny UNet's keys)."""
    unet = [f"model.unet.{key}={value}".replace(" ", "") for key, value in TINY_UNETS[unet_type].items()]
    cond = [f"model.conditioning.{key}={value}" for key, value in TINY_CONDITIONING.items()] if tiny_text else []
    data = ["model.data.synthetic_data=True", "model.data.synthetic_data_length=64"] if synthetic else []
    return unet + cond + data + [
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "trainer.precision=32",
        f"trainer.max_steps={max_steps}",
        "trainer.log_every_n_steps=1",
        "trainer.enable_model_summary=False",
        "model.micro_batch_size=2",
        "model.global_batch_size=4",
        "model.inductor=False",
        "model.data.num_workers=0",
        "model.sample_log.every_n_steps=2",
        "model.sample_log.steps=2",
        "model.sample_log.images_per_prompt=1",
        "model.optim.sched.warmup_steps=2",
        "exp_manager.checkpoint_callback_params.every_n_train_steps=2",
        f"exp_manager.exp_dir={exp_dir}",
        *extra,
    ]


def run_example(script, *args, check=True):
    """Runs examples/<script> in a fresh interpreter; on failure the assertion shows its output."""
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / script), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{script} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return result


def tensorboard_scalars(run_dir):
    """{tag: [(step, value), ...]} over every event file under run_dir."""
    import glob

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = {}
    for events in glob.glob(f"{run_dir}/**/events.out.tfevents.*", recursive=True):
        accumulator = EventAccumulator(events, size_guidance={"scalars": 0, "images": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((event.step, event.value) for event in accumulator.Scalars(tag))
    return scalars
