"""Data-parallel training: 2 gloo processes under torchrun against 1 process with the same global batch.

Run A: 2 ranks x micro batch 2. Run B: 1 process x micro batch 2 x 2 accumulation steps. Run C: 1 process x
micro batch 4. The synthetic loader gives each global batch the same 4 samples in all three, and the training
noise is keyed by (seed, step, sample), so the three runs must end with the same weights up to float rounding
(the only difference is the order of the gradient sums)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nemo_imagen.data.demo import make_demo_dataset
from nemo_imagen.data.webdataset_pipeline import build_train_dataloader
from nemo_imagen.data.config import DataConfig, TrainDataConfig, WebdatasetConfig
from nemo_imagen.text.config import ConditioningConfig

REPO = Path(__file__).resolve().parents[2]
DRIVER = REPO / "tests" / "scaleout" / "train_driver.py"
STEPS = 3
TINY = [
    "model.unet.embed_dim=32", "model.unet.channel_mult=[1,2]", "model.unet.num_res_blocks=1",
    "model.unet.attention_resolutions=[8]", "model.unet.per_head_channels=16", "model.unet.cond_dim=32",
    "model.unet.image_size=16", "model.unet.dropout=0.0",
    "model.conditioning.embed_dim=16", "model.conditioning.token_length=8", "model.conditioning.drop_rate=0.3",
    "model.data.synthetic_data=True", "model.data.synthetic_data_length=64", "model.data.num_workers=0",
    "trainer.accelerator=cpu", "trainer.precision=32", f"trainer.max_steps={STEPS}", "trainer.log_every_n_steps=1",
    "trainer.enable_model_summary=False", "model.inductor=False", "model.sample_log.every_n_steps=0",
    "model.optim.sched.warmup_steps=2", "exp_manager.checkpoint_callback_params.every_n_train_steps=2",
    "model.global_batch_size=4", "model.optim.lr=0.001",
]


def train(out_dir: Path, nproc: int, micro_batch: int):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"] if nproc > 1 else [sys.executable]
    overrides = TINY + [f"trainer.devices={nproc}", f"model.micro_batch_size={micro_batch}", f"exp_manager.exp_dir={out_dir}/exp"]
    if nproc > 1:
        overrides.append("++trainer.strategy=ddp")
    result = subprocess.run(
        [*launcher, str(DRIVER), str(out_dir), "base64-500m", *overrides],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
    )
    if result.returncode != 0:
        raise AssertionError(f"training failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return [torch.load(out_dir / f"rank{rank}.pt", weights_only=False) for rank in range(nproc)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    return {
        "ddp": train(root / "ddp", nproc=2, micro_batch=2),
        "accumulate": train(root / "accumulate", nproc=1, micro_batch=2)[0],
        "micro4": train(root / "micro4", nproc=1, micro_batch=4)[0],
        "root": root,
    }


def max_difference(a, b):
    return max((a[key] - b[key]).abs().max().item() for key in a)


def test_ranks_end_with_identical_weights(runs):
    rank0, rank1 = runs["ddp"]
    assert rank0["world_size"] == rank1["world_size"] == 2
    assert max_difference(rank0["unet"], rank1["unet"]) == 0.0
    assert max_difference(rank0["ema"], rank1["ema"]) == 0.0
    assert max_difference(rank0["unet"], rank0["initial_unet"]) > 1e-3  # it trained


def test_ranks_consume_disjoint_samples_of_the_global_batch(runs):
    rank0, rank1 = runs["ddp"]
    for (step0, keys0), (step1, keys1), (step, keys) in zip(rank0["keys"], rank1["keys"], runs["micro4"]["keys"]):
        assert step0 == step1 == step
        assert len(keys0) == len(keys1) == 2 and not set(keys0) & set(keys1)
        assert set(keys0) | set(keys1) == set(keys)  # together they are the single process's global batch
    assert len(rank0["keys"]) == STEPS


def test_ddp_equals_one_process_with_the_same_global_batch(runs):
    ddp = runs["ddp"][0]
    for other in (runs["accumulate"], runs["micro4"]):
        assert max_difference(ddp["unet"], other["unet"]) < 1e-6
        assert max_difference(ddp["ema"], other["ema"]) < 1e-6
    # the reduced loss both ranks log is the mean over the global batch: the 1-process micro batch 4 loss
    rank0, rank1 = runs["ddp"]
    for (step, local0, reduced0), (_, local1, reduced1), (_, single, _) in zip(rank0["losses"], rank1["losses"], runs["micro4"]["losses"]):
        assert reduced0 == reduced1
        assert reduced0 == pytest.approx((local0 + local1) / 2, rel=1e-6)
        assert reduced0 == pytest.approx(single, rel=1e-5)


def test_checkpoints_are_written_once(runs):
    run_dir = runs["root"] / "ddp" / "exp" / "imagen-base64-500m"
    names = sorted(path.name for path in (run_dir / "checkpoints").iterdir())
    assert len(names) == 3 and names[-1] == "imagen-base64-500m.nemo", names  # step 2, step 3 (last), .nemo
    assert len(list(run_dir.glob("**/events.out.tfevents.*"))) == 1


def test_webdataset_ranks_read_disjoint_keyed_samples(tmp_path):
    """Each rank's batches carry `sample_keys`; over one epoch the 2 ranks' keys are disjoint and cover the data."""
    make_demo_dataset(str(tmp_path), num_samples=48, samples_per_shard=16, num_val_samples=0)
    data = DataConfig(
        num_workers=0,
        train=TrainDataConfig(dataset_path=[str(tmp_path / "train-{000000..000002}.tar")], target_resolutions=[64]),
        webdataset=WebdatasetConfig(infinite_sampler=False, shuffle_buffer=8),
    )
    cond = ConditioningConfig(embed_dim=8, token_length=8, precached_key=None, online_encoding=True, encoder_path="minilm")
    keys = []
    for rank in range(2):
        loader = build_train_dataloader(data, cond, micro_batch_size=4, rank=rank, world_size=2)
        keys.append([key for batch in loader for key in batch["sample_keys"]])
    assert len(keys[0]) == len(set(keys[0])) > 0 and len(keys[1]) == len(set(keys[1])) > 0
    assert not set(keys[0]) & set(keys[1])
    assert len(keys[0]) + len(keys[1]) == 48
