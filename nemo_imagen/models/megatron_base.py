"""A CPU-safe stand-in for NeMo's MegatronBaseModel, for a purely data-parallel model.

NeMo's own Megatron base classes need NVIDIA apex and call CUDA-only functions in `__init__`. This base does
the part a data-parallel UNet needs, with `megatron.core` directly: the parallel state (tensor and pipeline
parallel sizes 1), micro/global batch arithmetic with gradient accumulation, consumed samples, and the
optimizer with NeMo's learning-rate schedulers.
"""
import torch
import torch.distributed as dist
from megatron.core import parallel_state
from nemo.core import ModelPT
from nemo.core.optim.lr_scheduler import prepare_lr_scheduler
from nemo.utils import logging

from nemo_imagen.models.config import ConfigError


def trainer_data_parallel_size(trainer_cfg) -> int:
    """Number of data-parallel ranks a trainer config asks for: devices x nodes."""
    devices = trainer_cfg.get("devices", 1)
    if isinstance(devices, str) and devices.isdigit():
        devices = int(devices)
    if not isinstance(devices, (int, str)) and devices is not None:  # a list of device ids
        devices = len(devices)
    elif devices in (None, "auto", -1):
        devices = torch.cuda.device_count() if torch.cuda.is_available() else 1
    return int(devices) * int(trainer_cfg.get("num_nodes", 1) or 1)


def gradient_accumulation_steps(micro_batch_size: int, global_batch_size: int, dp_size: int) -> int:
    """global = micro x data-parallel size x accumulation; a global batch that does not divide is an error."""
    per_step = micro_batch_size * dp_size
    if global_batch_size % per_step:
        raise ConfigError(
            f"model.global_batch_size: {global_batch_size} is not a multiple of model.micro_batch_size "
            f"({micro_batch_size}) x data-parallel size ({dp_size})"
        )
    return global_batch_size // per_step


def build_optimizer(parameters, optim_cfg) -> torch.optim.AdamW:
    """AdamW for the `optim` block (adam, adamw and fused_adam are all AdamW; fused_adam uses the fused CUDA
    kernel when a GPU is present) over the parameters that require grad."""
    decay, no_decay = [], []
    for param in parameters:
        if param.requires_grad:
            # decay matrices and convolution kernels only, not biases, norms or null tokens
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": optim_cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    fused = optim_cfg.name == "fused_adam" and torch.cuda.is_available()
    return torch.optim.AdamW(
        groups, lr=optim_cfg.lr, betas=tuple(optim_cfg.betas), eps=optim_cfg.eps, fused=fused or None
    )


def gather_from_ranks(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] (a one-element list without a process group)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        gathered = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, obj)
        return gathered
    return [obj]


class MegatronImagenBase(ModelPT):
    """Parallel state, batch arithmetic and optimizer setup for a data-parallel NeMo model."""

    def __init__(self, cfg, trainer=None):
        super().__init__(cfg, trainer=trainer)
        self._owns_process_group = False

    # ---- parallel state ----
    def setup(self, stage=None):
        if stage == "fit":
            self.setup_parallel_state()
            self._check_gradient_accumulation()
            self.setup_training_data(self.cfg.data)

    def setup_parallel_state(self):
        """Initialise megatron.core's parallel state on the process group Lightning created; a
        single-process run gets a gloo group of size one so the same code path runs everywhere."""
        if not dist.is_initialized():
            dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
            self._owns_process_group = True
        if not parallel_state.model_parallel_is_initialized():
            parallel_state.initialize_model_parallel(tensor_model_parallel_size=1, pipeline_model_parallel_size=1)
        # Data-parallel only: megatron's DP group must be Lightning's world, rank for rank (data sharding reads
        # megatron's rank, gradient averaging uses Lightning's).
        trainer = self._trainer
        if trainer is not None and (self.data_parallel_size, self.data_parallel_rank) != (trainer.world_size, trainer.global_rank):
            raise ConfigError(
                f"trainer.devices x trainer.num_nodes: Lightning runs {trainer.world_size} processes (this is rank "
                f"{trainer.global_rank}), but megatron.core's data-parallel group has {self.data_parallel_size} "
                f"(rank {self.data_parallel_rank}); tensor/pipeline parallelism is not supported"
            )
        if torch.cuda.is_available():
            from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

            model_parallel_cuda_manual_seed(self.cfg.seed)

    def teardown(self, stage=None):
        if stage == "fit" and self._owns_process_group:
            parallel_state.destroy_model_parallel()
            dist.destroy_process_group()
            self._owns_process_group = False

    @property
    def data_parallel_rank(self) -> int:
        return parallel_state.get_data_parallel_rank() if parallel_state.model_parallel_is_initialized() else 0

    @property
    def data_parallel_size(self) -> int:
        if parallel_state.model_parallel_is_initialized():
            return parallel_state.get_data_parallel_world_size()
        return 1

    def _check_gradient_accumulation(self):
        expected = gradient_accumulation_steps(
            self.cfg.micro_batch_size, self.cfg.global_batch_size, self.data_parallel_size
        )
        if self.trainer.accumulate_grad_batches != expected:
            raise ConfigError(
                f"trainer.accumulate_grad_batches: {self.trainer.accumulate_grad_batches}, but model.global_batch_size "
                f"{self.cfg.global_batch_size} = micro batch {self.cfg.micro_batch_size} x data-parallel size "
                f"{self.data_parallel_size} x accumulation needs {expected} (examples/train.py sets it for you)"
            )

    @property
    def consumed_samples(self) -> int:
        """Samples consumed once the optimizer step now in progress completes (what a checkpoint written
        after it has seen): (completed steps + 1) x global batch size."""
        return (int(self.trainer.global_step) + 1) * int(self.cfg.global_batch_size) if self._trainer else 0

    # ---- optimizer ----
    def configure_optimizers(self):
        optim_cfg = self.cfg.optim
        optimizer = build_optimizer(self.parameters(), optim_cfg)
        if not optim_cfg.get("sched"):
            return optimizer
        sched_cfg = dict(optim_cfg.sched)
        sched_cfg.setdefault("max_steps", self.trainer.max_steps if self._trainer else -1)
        scheduler = prepare_lr_scheduler(optimizer=optimizer, scheduler_config=sched_cfg)
        if scheduler is None:
            raise ConfigError(f"model.optim.sched: could not build a scheduler from {sched_cfg}")
        return [optimizer], [scheduler]

    # ---- ModelPT's abstract hooks: training only, no validation loop ----
    def setup_validation_data(self, val_data_config):
        logging.info("MegatronImagen has no validation loop; quality is measured by examples/eval_fid_clip.py")

    def setup_test_data(self, test_data_config):
        logging.info("MegatronImagen has no test loop")

    @classmethod
    def list_available_models(cls):
        return None
