"""Lightning Trainer and NeMo exp_manager set up from a training config, the way NeMo's Megatron builders did."""
import functools
import sys

import lightning.pytorch as pl
import torch
from nemo.utils.exp_manager import exp_manager
from omegaconf import DictConfig, open_dict

from nemo_imagen.models.config import ConfigError
from nemo_imagen.models.megatron_base import gradient_accumulation_steps, trainer_data_parallel_size


def build_trainer(cfg: DictConfig) -> pl.Trainer:
    """Derives gradient accumulation from the model's micro/global batch, builds the Trainer and lets
    exp_manager attach TensorBoard, checkpointing and resume-if-exists."""
    if cfg.trainer.get("logger") or cfg.trainer.get("enable_checkpointing"):
        raise ConfigError(
            "trainer.logger / trainer.enable_checkpointing: set both to False; exp_manager creates the "
            "TensorBoard logger and the checkpoint callback"
        )
    dp_size = trainer_data_parallel_size(cfg.trainer)
    accumulation = gradient_accumulation_steps(cfg.model.micro_batch_size, cfg.model.global_batch_size, dp_size)
    with open_dict(cfg):
        cfg.trainer.accumulate_grad_batches = accumulation
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    pl.seed_everything(cfg.model.seed, workers=True)
    trainer = pl.Trainer(**cfg.trainer)
    exp_manager(trainer, cfg.get("exp_manager"))
    return trainer


def exit_on_config_error(main):
    """A user mistake in a config or a path is reported as one line, not a stack trace."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except (ConfigError, FileNotFoundError) as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)

    return wrapper
