"""The training progress bar over a loader without a length (synthetic data, the infinite webdataset sampler)
counts optimizer steps toward trainer.max_steps, with an ETA, instead of Lightning's `1400/?`."""
import math
import re
from types import SimpleNamespace

from nemo_imagen.models.trainer_builder import StepProgressBar
from tests.tiny import run_example, tiny_overrides

# "Epoch 0:  33%|███▎      | 1/3 [00:00<00:01,  1.91step/s, ..." -> (n, total, elapsed, remaining, unit)
BAR = re.compile(r"(\d+)/(\d+|\?) \[(\d\d:\d\d)<(\d\d:\d\d|\?), +[\d.?]+(?:s/)?(\w+)(?:/s)?")


def bar_states(stdout):
    return [match.groups() for match in BAR.finditer(stdout.replace("\r", "\n"))]


def test_a_tiny_run_shows_max_steps_as_total_and_an_eta(tmp_path):
    # micro batch 2, global batch 4: 2 micro batches per optimizer step, 6 in all
    result = run_example("train.py", "--config-name", "base64-500m-edm",
                         *tiny_overrides(tmp_path, max_steps=3, extra=["model.sample_log.every_n_steps=0"]))
    states = [state for state in bar_states(result.stdout) if state[1] != "?"]  # Lightning draws 0/? first
    assert states, result.stdout[-3000:]
    assert {total for _, total, _, _, _ in states} == {"3"}  # max_steps, not the 6 micro batches
    assert {unit for *_, unit in states} == {"step"}
    assert states[-1][0] == "3"
    assert [n for n, *_ in states if n != "0"][:2] == ["1", "2"]  # once per optimizer step, not per micro batch
    assert all(remaining != "?" for n, _, _, remaining, _ in states if n != "0")  # an ETA once a step is done


def fake_trainer(global_step, max_steps=10, num_training_batches=math.inf):
    return SimpleNamespace(is_global_zero=True, max_steps=max_steps, global_step=global_step, current_epoch=0,
                           num_training_batches=num_training_batches, loggers=[], progress_bar_metrics={"loss": 1.0})


def test_a_resumed_run_starts_the_bar_at_its_step_and_counts_this_runs_rate():
    bar, trainer = StepProgressBar(), fake_trainer(global_step=4)
    bar.setup(trainer, None, "fit")
    bar.on_train_start(trainer, None)
    bar.on_train_epoch_start(trainer, None)
    tqdm = bar.train_progress_bar
    assert (tqdm.n, tqdm.total, tqdm.initial) == (4, 10, 4)  # the ETA's rate counts steps from 4 on
    bar.on_train_batch_end(trainer, None, None, None, 0)  # first micro batch of step 5: no optimizer step yet
    assert tqdm.n == 4
    trainer.global_step = 5
    bar.on_train_batch_end(trainer, None, None, None, 1)
    assert tqdm.n == 5 and tqdm.postfix == "loss=1.000"
    bar.on_train_end(trainer, None)


def test_a_loader_with_a_length_keeps_lightnings_bar_of_batches():
    bar, trainer = StepProgressBar(), fake_trainer(global_step=0, num_training_batches=7)
    bar.setup(trainer, None, "fit")
    bar.on_train_start(trainer, None)
    bar.on_train_epoch_start(trainer, None)
    assert bar.train_progress_bar.total == 7
    bar.on_train_batch_end(trainer, None, None, None, 2)
    assert bar.train_progress_bar.n == 3
    bar.on_train_end(trainer, None)
