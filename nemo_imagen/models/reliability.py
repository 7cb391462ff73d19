"""Checkpoints that survive crashes and pre-emption.

- ``AtomicCheckpointIO``: every ``.ckpt`` is written to a temporary file in the same directory, flushed to
  disk and moved over its final name with ``os.replace``, so a crash leaves either the old file or the new
  one, never a half-written one. (Lightning's own writer copies from a temporary file in ``/tmp``, which is
  a plain copy, not a rename, when ``/tmp`` is another file system.)
- ``tidy_checkpoint_dir``: before exp_manager looks for ``*last.ckpt`` to resume from, removes what a
  killed run can leave behind (temporary files; a superseded ``last`` next to the newer one, which makes
  NeMo's resume refuse with "Multiple checkpoints ... that matches *last.ckpt").
- ``ReliabilityCallback``: a checkpoint every ``checkpoint_every_n_minutes`` of wall-clock time, and on
  SIGTERM / SIGUSR1 (SLURM's pre-emption warning) a checkpoint at the next optimizer-step boundary, a message
  on stderr saying so and how to resume, then a clean exit (status 0). Works in a plain process, with or
  without SLURM.
- ``capture_rng_state`` / ``restore_rng_state``: torch CPU and CUDA, numpy and python generator states.
"""
import os
import random
import re
import signal
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException
from nemo.utils import logging
from nemo.utils.callbacks import NeMoModelCheckpoint

from nemo_imagen.models.cli import resume_command

SIGNALS = ("SIGTERM", "SIGUSR1")
_TEMP_MARK = ".tmp-"


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that writes temp file -> fsync -> ``os.replace`` -> fsync of the directory."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"AtomicCheckpointIO.save_checkpoint takes no storage_options, got {storage_options}")
        atomic_torch_save(checkpoint, path)


def atomic_torch_save(obj, path) -> None:
    """``torch.save(obj, path)`` such that ``path`` is never seen half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}{_TEMP_MARK}{os.getpid()}")
    try:
        with open(temp, "wb") as stream:
            torch.save(obj, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)
    finally:
        if temp.exists():
            temp.unlink()
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)


_STEP_IN_NAME = re.compile(r"step=(\d+)")


def _checkpoint_step(path: Path) -> int:
    """The global step a checkpoint holds: from its name (``step=N``), else from the file."""
    match = _STEP_IN_NAME.search(path.name)
    if match:
        return int(match.group(1))
    return int(torch.load(path, map_location="cpu", weights_only=False).get("global_step", -1))


def tidy_checkpoint_dir(checkpoint_dir) -> None:
    """Removes leftovers of a killed run so that resuming picks the newest complete ``last`` checkpoint.

    Deletes stale temporary files of ``atomic_torch_save``; where several complete ``*last.ckpt`` exist
    (a run killed between writing the new ``last`` and deleting the previous one), keeps the one with the
    highest step and deletes the older ones, as the checkpoint callback would have.
    """
    directory = Path(checkpoint_dir)
    if not directory.is_dir():
        return
    for temp in directory.glob(f".*{_TEMP_MARK}*"):
        logging.warning(f"checkpoints: removing the temporary file of an interrupted save: {temp}")
        temp.unlink()
    lasts = [path for path in directory.glob("*last.ckpt") if not NeMoModelCheckpoint.is_checkpoint_unfinished(path)]
    if len(lasts) > 1:
        lasts.sort(key=lambda path: (_checkpoint_step(path), path.stat().st_mtime))
        for older in lasts[:-1]:
            logging.warning(f"checkpoints: removing {older.name}, superseded by {lasts[-1].name}")
            older.unlink()


def capture_rng_state() -> Dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


class ReliabilityCallback(Callback):
    """Timed checkpoints and checkpoint-then-exit on signals, always at an optimizer-step boundary.

    Args:
        checkpoint_every_n_minutes: wall-clock interval of ``last`` checkpoints (0 = only the step interval
            of exp_manager's ``checkpoint_callback_params.every_n_train_steps``).
        signals: names of the signals that trigger checkpoint-and-exit (``SIGTERM``, ``SIGUSR1``).

    A signal handler only sets a flag. Lightning itself would stop right after the current micro batch
    (its SIGTERM handling), possibly in the middle of a gradient accumulation and without a checkpoint;
    this callback defers that to the end of the optimizer step, writes the ``last`` checkpoint through
    exp_manager's checkpoint callback, prints on stderr that the run stopped early and the command that
    resumes it (with ``resume_overrides``, which ``build_trainer`` sets once exp_manager has chosen the run
    folder), and then exits with status 0 (Lightning's ``SIGTERMException``).
    """

    def __init__(self, checkpoint_every_n_minutes: float = 0.0, signals: Sequence[str] = SIGNALS):
        self.interval_s = 60.0 * checkpoint_every_n_minutes
        self.signals = [getattr(signal, name) for name in signals]
        self.resume_overrides: Optional[List[str]] = None
        self.received: Optional[int] = None
        self._previous_handlers: Dict[int, object] = {}
        self._last_save = time.monotonic()
        self._last_step = -1

    # ---- signals ----
    def _handle(self, signum, frame):
        self.received = signum

    def setup(self, trainer, pl_module, stage):
        if stage != "fit":
            return
        for signum in self.signals:  # Lightning registers its SIGTERM handler after this and chains ours
            self._previous_handlers[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handle)

    def teardown(self, trainer, pl_module, stage):
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers = {}

    # ---- checkpoints ----
    def on_train_start(self, trainer, pl_module):
        self._last_save = time.monotonic()
        self._last_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.received_sigterm:  # Lightning's handler saw SIGTERM (e.g. sent before ours was set)
            self.received = self.received or signal.SIGTERM
            trainer._signal_connector.received_sigterm = False  # we stop at the step boundary instead
        step = trainer.global_step
        if step == self._last_step:  # inside a gradient accumulation: no optimizer step yet
            return
        self._last_step = step
        # Saving is collective under data parallelism: every rank must take the same decision (a signal may
        # reach only some ranks, and their clocks differ), hence one any-rank reduction and one broadcast.
        if trainer.strategy.reduce_boolean_decision(self.received is not None, all=False):
            name = signal.Signals(self.received).name if self.received is not None else "a signal (other rank)"
            path = self.save_last(trainer)
            logging.info(f"reliability: {name} received; checkpoint at step {step} written to {path}; exiting")
            if trainer.is_global_zero:
                print(f"\n{self.stop_message(name, step, trainer.max_steps, path)}", file=sys.stderr, flush=True)
            raise SIGTERMException(0)
        time_due = self.interval_s > 0 and time.monotonic() - self._last_save >= self.interval_s
        if trainer.strategy.broadcast(time_due, src=0):
            path = self.save_last(trainer)
            logging.info(f"reliability: timed checkpoint at step {step}: {path}")

    def stop_message(self, name: str, step: int, max_steps: int, path: str) -> str:
        """What a user reads when a signal stopped the run: which signal, the step, the checkpoint, how to go on."""
        of = f" of {max_steps}" if max_steps and max_steps > 0 else ""
        lines = [f"Training stopped early: {name} received; the checkpoint of step {step}{of} is {path}"]
        if self.resume_overrides is None:  # no exp_manager: Lightning's own resume
            lines.append(f"To resume, pass ckpt_path={path!r} to Trainer.fit (docs/reliability.md)")
            return "\n".join(lines)
        command = resume_command(self.resume_overrides)
        if command is None:
            added = " ".join(self.resume_overrides)
            command = f"the same training command{' with ' + added if added else ''}"
        lines.append(f"To resume from it, run: {command}")
        lines.append("(docs/reliability.md, \"Checkpoints and resume\")")
        return "\n".join(lines)

    def save_last(self, trainer) -> str:
        """Writes the ``last`` checkpoint of the current step; returns its path."""
        self._last_save = time.monotonic()
        callback = trainer.checkpoint_callback
        if callback is None:
            path = str(Path(trainer.default_root_dir) / "checkpoints" / f"step={trainer.global_step}-last.ckpt")
            trainer.save_checkpoint(path)
            return path
        if getattr(callback, "_last_global_step_saved", None) == trainer.global_step and callback.last_model_path:
            return callback.last_model_path  # the step-interval save just wrote it
        callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))
        return callback.last_model_path
