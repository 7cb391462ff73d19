"""Every training config in examples/conf builds and trains two optimizer steps with tiny overrides, so none
can reference a key the code does not read or lack one it needs."""
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tests.tiny import REPO, run_example, tensorboard_scalars, tiny_overrides

NOT_TRAINING = {"sample", "fid_clip"}  # the configs of examples/sample.py and examples/eval_fid_clip.py
TRAINING_CONFIGS = sorted(path.stem for path in (REPO / "examples" / "conf").glob("*.yaml") if path.stem not in NOT_TRAINING)


def test_the_list_covers_the_documented_configs():
    documented = {"base64-500m", "base64-2b", "sr256-400m", "sr256-600m", "sr1024-400m"}
    assert documented | {f"{name}-edm" for name in documented} | {"quickstart"} <= set(TRAINING_CONFIGS)


@pytest.mark.slow
@pytest.mark.parametrize("config", TRAINING_CONFIGS)
def test_config_trains_two_steps(config, tmp_path):
    extra = ["model.sample_log.every_n_steps=0", "exp_manager.resume_if_exists=False"]
    quickstart = config.startswith("quickstart")
    yaml = OmegaConf.load(REPO / "examples" / "conf" / f"{config}.yaml")
    if quickstart:  # its own demo shards (made by train.py) and MiniLM text: only the model is shrunk
        # with demo_data.precache_dir, train.py also writes copies carrying the MiniLM token states, read instead
        shards = f"{tmp_path}/demo/minilm" if yaml.demo_data.get("precache_dir") else f"{tmp_path}/demo"
        extra += [f"demo_data.output_dir={tmp_path}/demo", "demo_data.num_samples=64",
                  f"model.data.train.dataset_path=[{shards}/train-000000.tar]"]
        if yaml.demo_data.get("precache_dir"):  # never the repository's own precache folder
            extra.append(f"demo_data.precache_dir={shards}")
    unet_type = yaml.model.unet_type
    overrides = tiny_overrides(tmp_path / "exp", 2, extra, tiny_text=not quickstart, synthetic=not quickstart,
                               unet_type=unet_type)
    result = run_example("train.py", "--config-name", config, *overrides)
    assert "model: " in result.stdout  # the .nemo path is printed
    nemo = Path(result.stdout.split("model: ")[1].split()[0])
    assert nemo.is_file()
    losses = [value for _, value in tensorboard_scalars(tmp_path / "exp")["reduced_train_loss"]]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
