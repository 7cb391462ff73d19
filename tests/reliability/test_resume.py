"""Exact resume after SIGKILL, and checkpoint-then-exit on SIGTERM / SIGUSR1 (fault injection on real processes)."""
import os
import random
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.reliability.helpers import (
    checkpoint_step,
    good_sample,
    last_checkpoints,
    shard_overrides,
    start_training,
    wait_for,
    write_shard,
)
from tests.tiny import REPO, run_example

MAX_STEPS = 10


def make_shards(tmp_path, count=2, per_shard=12):
    return [
        write_shard(tmp_path / f"train-{shard:06d}.tar", [good_sample(shard * 100 + i) for i in range(per_shard)])
        for shard in range(count)
    ]


def resume_overrides(exp_dir, shards):
    # 24 samples = 12 micro batches = 6 steps per epoch, so the 10 steps cross an epoch boundary; two
    # workers, a shuffle buffer, flips, text dropout and UNet dropout all draw random numbers that a resume
    # must reproduce.
    return shard_overrides(exp_dir, shards, MAX_STEPS, extra=[
        "model.data.num_workers=2",
        "model.data.webdataset.shuffle_buffer=4",
        "model.data.train.augmentations.horizontal_flip=True",
        "model.unet.dropout=0.1",
        "model.conditioning.drop_rate=0.3",
        "exp_manager.checkpoint_callback_params.every_n_train_steps=1",
        "exp_manager.checkpoint_callback_params.save_top_k=1",
        "exp_manager.resume_if_exists=True",
    ])


def final_state(exp_dir):
    (last,) = last_checkpoints(exp_dir)
    return torch.load(last, map_location="cpu", weights_only=False)


@pytest.mark.slow
def test_sigkill_at_a_random_step_then_resume_matches_an_uninterrupted_run(tmp_path):
    """One kill-and-resume trial (RELIABILITY_KILL_TRIALS=N runs N, each killed at another random point)."""
    shards = make_shards(tmp_path)
    run_example("train.py", "--config-name", "base64-500m-edm", *resume_overrides(tmp_path / "straight", shards))
    expected = final_state(tmp_path / "straight")
    for trial in range(int(os.environ.get("RELIABILITY_KILL_TRIALS", "1"))):
        killed_at = kill_and_resume(tmp_path / f"killed-{trial}", shards, expected)
        print(f"trial {trial}: killed after the checkpoint of step {killed_at}; resumed run equal bitwise")


def kill_and_resume(killed_dir, shards, expected) -> int:
    rng = random.Random()
    kill_after = rng.randint(2, MAX_STEPS - 3)
    process = start_training("--config-name", "base64-500m-edm", *resume_overrides(killed_dir, shards))
    # wait until a `last` checkpoint of step kill_after exists, then kill at a random moment of what follows
    # (the next step, or the writing of its checkpoint)
    wait_for(lambda: any(f"step={kill_after}-" in path.name for path in last_checkpoints(killed_dir)), process)
    time.sleep(rng.uniform(0.0, 0.3))
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    (checkpoint,) = last_checkpoints(killed_dir)
    killed_at = checkpoint_step(checkpoint)
    assert kill_after <= killed_at < MAX_STEPS, f"the run was not killed mid-way ({killed_at})"

    resumed = run_example("train.py", "--config-name", "base64-500m-edm", *resume_overrides(killed_dir, shards))
    assert "Resuming training from checkpoint" in resumed.stdout + resumed.stderr

    actual = final_state(killed_dir)
    assert actual["global_step"] == expected["global_step"] == MAX_STEPS
    assert expected["state_dict"].keys() == actual["state_dict"].keys()
    for name, tensor in expected["state_dict"].items():  # UNet and EMA weights: bitwise
        assert torch.equal(tensor, actual["state_dict"][name]), name
    expected_optim, actual_optim = expected["optimizer_states"][0]["state"], actual["optimizer_states"][0]["state"]
    for index, state in expected_optim.items():  # AdamW moments and step counts
        for key, value in state.items():
            assert torch.equal(value, actual_optim[index][key]), (index, key)
    assert expected["lr_schedulers"] == actual["lr_schedulers"]
    ours, theirs = expected["nemo_imagen"]["per_rank"][0], actual["nemo_imagen"]["per_rank"][0]
    assert (ours["data_counts"], ours["data_epoch"], ours["batches_in_epoch"]) == (
        theirs["data_counts"], theirs["data_epoch"], theirs["batches_in_epoch"]
    )
    assert (ours["data_counts"]["samples"], ours["data_epoch"], ours["batches_in_epoch"]) == (2 * 2 * MAX_STEPS, 1, 8)
    return killed_at


def signal_overrides(exp_dir, shards):
    return shard_overrides(exp_dir, shards, 10_000, extra=[
        "model.data.num_workers=2",
        "model.data.webdataset.shuffle_buffer=0",
        "exp_manager.checkpoint_callback_params.every_n_train_steps=100000",
        "model.reliability.checkpoint_every_n_minutes=0.01",  # a timed checkpoint every 0.6 s
    ])


def run_until_signal(exp_dir, shards, signum, whole_group, extra=()):
    process = start_training("--config-name", "base64-500m-edm", *signal_overrides(exp_dir, shards), *extra)
    first = wait_for(lambda: last_checkpoints(exp_dir), process)[0]
    first_step = checkpoint_step(first)
    time.sleep(1.0)
    if whole_group:  # as SLURM does: the training process and its dataloader workers all get the signal
        os.killpg(process.pid, signum)
    else:
        process.send_signal(signum)
    output, _ = process.communicate(timeout=120)
    return process.returncode, output, first_step


@pytest.mark.slow
def test_sigterm_and_sigusr1_write_a_checkpoint_of_the_current_step_and_exit_cleanly(tmp_path):
    shards = make_shards(tmp_path)
    for signum, whole_group in ((signal.SIGTERM, False), (signal.SIGUSR1, True)):
        exp_dir = tmp_path / signum.name
        returncode, output, first_step = run_until_signal(exp_dir, shards, signum, whole_group)
        assert returncode == 0, output[-3000:]
        line = next(line for line in output.splitlines() if f"{signum.name} received; checkpoint at step" in line)
        stopped_at = int(line.split("checkpoint at step ")[1].split(" ")[0])
        (last,) = last_checkpoints(exp_dir)
        assert checkpoint_step(last) == stopped_at > first_step  # fresh: newer than the timed one before the signal
        assert str(last) in line
        # what the user reads (stderr, whatever the log level): the signal, the step, the checkpoint, how to go on;
        # base64-500m-edm resumes by itself (exp_manager.resume_if_exists: True): the same command
        same_command = shlex.join(["python", str(REPO / "examples" / "train.py"), "--config-name", "base64-500m-edm",
                                   *signal_overrides(exp_dir, shards)])
        assert stop_message(output) == [
            f"Training stopped early: {signum.name} received; the checkpoint of step {stopped_at} of 10000 is {last}",
            f"To resume from it, run: {same_command}",
            '(docs/reliability.md, "Checkpoints and resume")',
        ]


def stop_message(output):
    return output[output.index("Training stopped early:"):].splitlines()[:3]


def test_stop_message_outside_a_script_and_without_exp_manager():
    from nemo_imagen.models.reliability import ReliabilityCallback

    callback = ReliabilityCallback(0, ["SIGTERM"])  # exp_manager did not run: Lightning's own resume
    assert callback.stop_message("SIGTERM", 7, 100, "/x/last.ckpt").splitlines() == [
        "Training stopped early: SIGTERM received; the checkpoint of step 7 of 100 is /x/last.ckpt",
        "To resume, pass ckpt_path='/x/last.ckpt' to Trainer.fit (docs/reliability.md)",
    ]
    callback.resume_overrides = ["exp_manager.resume_if_exists=True"]  # this process (pytest) is no script
    assert callback.stop_message("SIGUSR1", 7, -1, "/x/last.ckpt").splitlines()[:2] == [
        "Training stopped early: SIGUSR1 received; the checkpoint of step 7 is /x/last.ckpt",
        "To resume from it, run: the same training command with exp_manager.resume_if_exists=True",
    ]


@pytest.mark.slow
def test_the_printed_command_resumes_a_stopped_run_that_had_no_resume_if_exists(tmp_path):
    """The quickstart's case: without resume_if_exists, exp_manager keeps each run in its own version folder, which
    a rerun with only resume_if_exists=True would not look in; the printed command names it."""
    shards = make_shards(tmp_path)
    exp_dir = tmp_path / "exp"
    returncode, output, _ = run_until_signal(exp_dir, shards, signal.SIGTERM, False,
                                             extra=["exp_manager.resume_if_exists=False"])
    assert returncode == 0, output[-3000:]
    (last,) = last_checkpoints(exp_dir)
    stopped_at, version = checkpoint_step(last), last.parent.parent.name  # exp_dir/name/VERSION/checkpoints/
    command = shlex.split(stop_message(output)[1].removeprefix("To resume from it, run: "))
    assert command == ["python", str(REPO / "examples" / "train.py"), "--config-name", "base64-500m-edm",
                       *signal_overrides(exp_dir, shards), "exp_manager.resume_if_exists=True",
                       f"++exp_manager.version={version}"]
    # run it (two more steps, so that it ends)
    resumed = subprocess.run([sys.executable, *command[1:], f"trainer.max_steps={stopped_at + 2}"], cwd=REPO,
                             capture_output=True, text=True, timeout=600,
                             env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Restoring states from the checkpoint path at {last}" in resumed.stdout + resumed.stderr
    (last,) = last_checkpoints(exp_dir)
    assert (last.parent.parent.name, checkpoint_step(last)) == (version, stopped_at + 2)  # same folder, 2 steps on
