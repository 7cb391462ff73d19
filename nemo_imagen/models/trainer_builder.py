"""Lightning Trainer and NeMo exp_manager set up from a training config, the way NeMo's Megatron builders did."""
import math
import os
from pathlib import Path
from typing import List

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from nemo.utils import logging
from nemo.utils.exp_manager import exp_manager
from omegaconf import DictConfig, open_dict

from nemo_imagen.models.reliability import AtomicCheckpointIO, ReliabilityCallback, tidy_checkpoint_dir
from nemo_imagen.models.config import ConfigError, validate_model_config
from nemo_imagen.models.megatron_base import gradient_accumulation_steps, trainer_data_parallel_size
from nemo_imagen.precision import accelerator_device_type, choose_precision


def build_trainer(cfg: DictConfig) -> pl.Trainer:
    """Checks the `model` block, derives gradient accumulation from the model's micro/global batch, builds the
    Trainer and lets exp_manager attach TensorBoard, checkpointing and resume-if-exists.

    A mistake in `model` raises `ConfigError` naming the key before anything is built (no run folder).

    Checkpoints are written atomically (``AtomicCheckpointIO``); ``ReliabilityCallback`` adds timed
    checkpoints and checkpoint-and-exit on the signals of ``model.reliability`` (it replaces NeMo's
    GPU-only preemption callback, which would save in the middle of a gradient accumulation), and
    ``StepProgressBar`` gives the bar a total where the loader has no length."""
    typed, _ = validate_model_config(cfg.model)
    if cfg.trainer.get("logger") or cfg.trainer.get("enable_checkpointing"):
        raise ConfigError(
            "trainer.logger / trainer.enable_checkpointing: set both to False; exp_manager creates the "
            "TensorBoard logger and the checkpoint callback"
        )
    dp_size = trainer_data_parallel_size(cfg.trainer)
    accumulation = gradient_accumulation_steps(cfg.model.micro_batch_size, cfg.model.global_batch_size, dp_size)
    precision, reason = choose_precision(cfg.trainer.get("precision", "32-true"),
                                         accelerator_device_type(cfg.trainer.get("accelerator")))
    logging.info(reason)
    with open_dict(cfg):
        cfg.trainer.accumulate_grad_batches = accumulation
        cfg.trainer.precision = precision  # `model.precision: ${trainer.precision}` follows
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    pl.seed_everything(cfg.model.seed, workers=True)
    reliability = typed.reliability
    callback = ReliabilityCallback(reliability.checkpoint_every_n_minutes, list(reliability.checkpoint_on_signals))
    callbacks = [callback]
    if cfg.trainer.get("enable_progress_bar", True):
        callbacks.append(StepProgressBar())
    trainer = pl.Trainer(**cfg.trainer, plugins=[AtomicCheckpointIO()], callbacks=callbacks)
    exp_cfg = cfg.get("exp_manager")
    if exp_cfg is not None:
        with open_dict(exp_cfg):
            exp_cfg.create_preemption_callback = False
        if exp_cfg.get("resume_if_exists"):
            tidy_checkpoint_dir(_checkpoint_dir(cfg, exp_cfg))
    log_dir = exp_manager(trainer, exp_cfg)
    if log_dir is not None:
        callback.resume_overrides = resume_overrides(exp_cfg, Path(log_dir))
    return trainer


def resume_overrides(exp_cfg, log_dir: Path) -> List[str]:
    """The command-line overrides that make a rerun of this command resume from its `last` checkpoint (see
    docs/reliability.md): none with `resume_if_exists` (the rerun looks in the same folder); otherwise
    `resume_if_exists=True`, and the run's version folder, where exp_manager put its checkpoints."""
    exp_cfg = exp_cfg or {}
    if exp_cfg.get("resume_if_exists"):
        return []
    overrides = [f"{'' if 'resume_if_exists' in exp_cfg else '++'}exp_manager.resume_if_exists=True"]
    if not exp_cfg.get("explicit_log_dir"):  # log_dir is exp_dir/name/version
        overrides.append(f"++exp_manager.version={log_dir.name}")
    return overrides


class StepProgressBar(TQDMProgressBar):
    """Lightning's progress bar; but over a loader without a length (the infinite webdataset sampler, synthetic
    data), where Lightning shows `1400/?` and no ETA, it counts optimizer steps toward `trainer.max_steps` (one
    step = accumulate_grad_batches micro batches), with an ETA from this run's rate. A resumed run's bar starts
    at the step of its checkpoint."""

    def _counts_steps(self, trainer) -> bool:
        return trainer.max_steps > 0 and math.isinf(trainer.num_training_batches)

    def on_train_epoch_start(self, trainer, *args) -> None:
        super().on_train_epoch_start(trainer, *args)
        bar = self.train_progress_bar
        if self._counts_steps(trainer) and not bar.disable:
            bar.unit = "step"
            bar.reset(total=trainer.max_steps)
            bar.initial = bar.n = bar.last_print_n = trainer.global_step  # the rate (ETA) counts this run's steps
            bar.refresh()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._counts_steps(trainer):
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        bar, step = self.train_progress_bar, trainer.global_step
        if step != bar.n and self._should_update(step, bar.total):  # once per optimizer step
            bar.n = step
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # refreshes the bar


def _checkpoint_dir(cfg: DictConfig, exp_cfg: DictConfig) -> Path:
    """Where exp_manager keeps checkpoints when resume_if_exists is set (no version folder unless
    `exp_manager.version` names one, as the resume command of a stopped versioned run does)."""
    dirpath = (exp_cfg.get("checkpoint_callback_params") or {}).get("dirpath")
    if dirpath:
        return Path(dirpath)
    if exp_cfg.get("explicit_log_dir"):
        return Path(exp_cfg.explicit_log_dir) / "checkpoints"
    exp_dir = exp_cfg.get("exp_dir") or os.path.join(os.getcwd(), "nemo_experiments")
    return Path(exp_dir) / (exp_cfg.get("name") or "default") / str(exp_cfg.get("version") or "") / "checkpoints"
