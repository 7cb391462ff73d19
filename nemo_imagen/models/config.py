"""The `model` block of a training config, typed and checked before any weight is allocated.

Each YAML block has a dataclass next to the code that reads it (`modules/config.py`, `diffusion/config.py`,
`text/config.py`, `data/config.py`); this module assembles them into `ImagenConfig` and turns OmegaConf's
and the dataclasses' errors into one `ConfigError` that names the offending key.
"""
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nemo_imagen.config_checks import ConfigError
from nemo_imagen.data.config import DataConfig
from nemo_imagen.diffusion import THRESHOLDS, preconditioning_config_class
from nemo_imagen.modules import SUPER_RESOLUTION_UNET_TYPES, unet_config_class
from nemo_imagen.text.config import ConditioningConfig


@dataclass
class OptimConfig:
    """NeMo-style `optim` block. `name`: adam, adamw or fused_adam (all AdamW with decoupled weight decay;
    `fused_adam` uses PyTorch's fused CUDA kernel on GPU). `sched` goes to NeMo's scheduler registry
    (e.g. `{name: WarmupPolicy, warmup_steps: 10000}`)."""

    name: str = "fused_adam"
    lr: float = 1e-4
    eps: float = 1e-8
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    sched: Optional[Dict[str, Any]] = None

    def __post_init__(self):
        if self.name not in ("adam", "adamw", "fused_adam"):
            raise ConfigError(f"optim.name: {self.name!r} is not one of adam, adamw, fused_adam")
        if self.lr <= 0:
            raise ConfigError(f"optim.lr: {self.lr} must be positive")
        if len(self.betas) != 2:
            raise ConfigError(f"optim.betas: needs two values, got {list(self.betas)}")


@dataclass
class EMAConfig:
    """Exponential moving average of the UNet weights, kept in the checkpoint and used for sampling.
    The effective decay ramps up as min(decay, (1 + step) / (10 + step)) so short runs are usable."""

    enable: bool = True
    decay: float = 0.9999

    def __post_init__(self):
        if not 0.0 < self.decay < 1.0:
            raise ConfigError(f"ema.decay: {self.decay} is not in (0, 1)")


@dataclass
class SampleLogConfig:
    """Every `every_n_steps` steps a grid of samples for fixed prompts goes to TensorBoard (0 = never).
    Without a text encoder (precached embeddings) the first training batch's captions are used.
    `sampler`, `steps`, `cfg` and `thresholding` travel in the `.nemo` as the stage's own sampling settings:
    sample.py and the cascade pipeline use them wherever `samplings` does not set them."""

    every_n_steps: int = 1000
    prompts: List[str] = field(default_factory=lambda: ["a photo of a cat", "a red car on a street"])
    images_per_prompt: int = 2
    sampler: str = "edm"
    steps: int = 30
    cfg: float = 4.0
    thresholding: str = "dynamic"  # dynamic | static | none; static suits an SR stage sampled at cfg 1
    seed: int = 0

    def __post_init__(self):
        if self.thresholding not in THRESHOLDS:
            raise ConfigError(
                f"model.sample_log.thresholding: {self.thresholding!r} is not one of {', '.join(THRESHOLDS)}"
            )


@dataclass
class ReliabilityConfig:
    """`model.reliability` (see docs/reliability.md).

    checkpoint_every_n_minutes: also write the `last` checkpoint every this many minutes of wall-clock
        time (0 = only exp_manager's `every_n_train_steps`).
    checkpoint_on_signals: signals that make the run write a checkpoint at the end of the current optimizer
        step and exit with status 0 (SLURM sends SIGUSR1 before pre-emption with `--signal`, SIGTERM at it).
    max_consecutive_nonfinite_steps: optimizer steps with a NaN/inf loss or gradient are skipped (no weight
        or EMA update); this many in a row stop the run (0 = never stop).
    """

    checkpoint_every_n_minutes: float = 0.0
    checkpoint_on_signals: List[str] = field(default_factory=lambda: ["SIGTERM", "SIGUSR1"])
    max_consecutive_nonfinite_steps: int = 20

    def __post_init__(self):
        if self.checkpoint_every_n_minutes < 0:
            raise ConfigError(
                f"model.reliability.checkpoint_every_n_minutes: {self.checkpoint_every_n_minutes} must be >= 0"
            )
        for name in self.checkpoint_on_signals:
            if name not in ("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGINT"):
                raise ConfigError(
                    f"model.reliability.checkpoint_on_signals: {name!r} is not one of SIGTERM, SIGUSR1, SIGUSR2, SIGINT"
                )
        if self.max_consecutive_nonfinite_steps < 0:
            raise ConfigError(
                f"model.reliability.max_consecutive_nonfinite_steps: {self.max_consecutive_nonfinite_steps} must be >= 0"
            )


AUTOCAST_DTYPES = {"bf16-mixed": "bfloat16", "bf16": "bfloat16", "16-mixed": "float16", "16": "float16"}


@dataclass
class ImagenConfig:
    # Lightning's precision name (normally `${trainer.precision}`), or `auto` (nemo_imagen/precision.py), which
    # build_trainer resolves for the training machine. Sampling picks its own autocast where it runs.
    precision: Any = "auto"
    micro_batch_size: int = 32
    global_batch_size: int = 32
    inductor: bool = False
    channels_last: bool = True
    # `base`: the regular UNet of a 64x64 base stage; `sr-unet` (regular UNet) and `sr` (Efficient UNet):
    # super-resolution stages, which also take the stage below's image (see `low_resolution`).
    unet_type: str = "base"
    # UNetConfig or EfficientUNetConfig (modules/config.py), by `unet_type`: `validate_model_config` merges the
    # block into that dataclass and stores the object here. `Any`, because OmegaConf's structured configs take no
    # Union of dataclasses; the YAML block is a mapping until then.
    unet: Any = field(default_factory=dict)
    # Noise-conditioning augmentation of an SR stage's low-res input (NeMo's key): a random corruption
    # level in training, `noise_cond_aug_sigma` at sampling (null = the preconditioning's sigma_min).
    noise_cond_aug: bool = False
    noise_cond_aug_sigma: Optional[float] = None
    seed: int = 1234
    resume_from_checkpoint: Optional[str] = None
    preconditioning_type: str = "EDM"
    # EDMConfig or DDPMConfig (diffusion/config.py), by `preconditioning_type`, stored by `validate_model_config`
    # as for `unet` (`Any` for the same reason).
    preconditioning: Any = field(default_factory=dict)
    conditioning: ConditioningConfig = field(default_factory=ConditioningConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    sample_log: SampleLogConfig = field(default_factory=SampleLogConfig)
    reliability: ReliabilityConfig = field(default_factory=ReliabilityConfig)
    # Written by NeMo's ModelPT into every model config it saves.
    target: Optional[str] = None
    nemo_version: Optional[str] = None

    @property
    def is_super_resolution(self) -> bool:
        return self.unet_type in SUPER_RESOLUTION_UNET_TYPES

    def training_resolutions(self) -> List[int]:
        """The square sizes of a training batch: `[image_size]` for a base stage, `[low, high]` for SR."""
        if self.is_super_resolution:
            return sorted(self.data.train.target_resolutions)
        return [self.unet.image_size]

    @property
    def upscale_factor(self) -> int:
        """How much an SR stage enlarges its input (high / low training resolution); 1 for a base stage."""
        if not self.is_super_resolution:
            return 1
        low, high = self.training_resolutions()
        return high // low

    @property
    def low_resolution(self) -> Optional[int]:
        """Side of the low-res image an SR stage samples from: image_size / upscale_factor (None for base).
        sr1024-400m trains on 256 crops with their 64 downsample (factor 4) and samples 256 -> 1024."""
        return self.unet.image_size // self.upscale_factor if self.is_super_resolution else None

    def __post_init__(self):
        # unet_type is checked once, by `unet_config_class` in `validate_model_config`
        if self.noise_cond_aug_sigma is not None and not self.noise_cond_aug_sigma > 0:
            raise ConfigError(f"model.noise_cond_aug_sigma: {self.noise_cond_aug_sigma} must be > 0 (or null)")
        for key in ("micro_batch_size", "global_batch_size"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"model.{key}: {getattr(self, key)} must be positive")
        if self.global_batch_size % self.micro_batch_size:
            raise ConfigError(
                f"model.global_batch_size: {self.global_batch_size} is not a multiple of "
                f"model.micro_batch_size {self.micro_batch_size}"
            )


def _clean_error(error: OmegaConfBaseException, prefix: str) -> ConfigError:
    full_key = getattr(error, "full_key", None)
    message = str(error).split("\n")[0]
    where = f"{prefix}.{full_key}" if full_key else prefix
    return ConfigError(f"{where}: {message}")


def _merge_block(schema: DictConfig, block, prefix: str) -> DictConfig:
    """Merges a YAML block into the schema of its type; errors name the key under `prefix`."""
    try:
        return OmegaConf.merge(schema, block or {})
    except OmegaConfBaseException as error:
        raise _clean_error(error, prefix) from None


def validate_model_config(cfg: DictConfig):
    """Checks the `model` block: unknown keys, wrong types and bad values raise `ConfigError` naming the key.

    Returns `(typed, merged)`: the `ImagenConfig` object (with `preconditioning` as its typed dataclass) and
    the DictConfig with every default filled in, which the model stores and saves in its `.nemo`.
    """
    try:
        # resolve `${trainer.precision}`-style references while the block still has its parent config
        cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg)
        merged = OmegaConf.merge(OmegaConf.structured(ImagenConfig), cfg)
        precond_type = merged.preconditioning_type
        try:
            precond_schema = OmegaConf.structured(preconditioning_config_class(precond_type))
        except ValueError as error:
            raise ConfigError(f"model.{error}") from None
        precond = _merge_block(precond_schema, cfg.get("preconditioning"), "model.preconditioning")
        try:
            unet_schema = OmegaConf.structured(unet_config_class(merged.unet_type))
        except ValueError as error:
            raise ConfigError(f"model.{error}") from None
        unet = _merge_block(unet_schema, cfg.get("unet"), "model.unet")
    except OmegaConfBaseException as error:
        raise _clean_error(error, "model") from None
    try:
        typed = OmegaConf.to_object(merged)
        typed.preconditioning = OmegaConf.to_object(precond)
        typed.unet = OmegaConf.to_object(unet)
    except OmegaConfBaseException as error:
        raise _clean_error(error, "model") from None
    except ConfigError:
        raise
    except ValueError as error:
        message = str(error)
        raise ConfigError(message if message.startswith("model.") else f"model.{message}") from None
    _check_stage(typed)
    merged.preconditioning = OmegaConf.to_container(precond)
    merged.unet = OmegaConf.to_container(unet)
    return typed, merged


def _check_stage(typed: ImagenConfig) -> None:
    """Cross-block checks: the training resolutions fit the UNet type and size."""
    resolutions = sorted(typed.data.train.target_resolutions)
    image_size = typed.unet.image_size
    if not typed.is_super_resolution:
        if typed.noise_cond_aug:
            raise ConfigError(
                "model.noise_cond_aug: only super-resolution stages (unet_type sr or sr-unet) have a low-res input "
                "to augment; set it False for unet_type base"
            )
        if not typed.data.synthetic_data and resolutions[-1] != image_size:
            raise ConfigError(
                f"model.data.train.target_resolutions: the largest entry ({resolutions[-1]}) must equal "
                f"model.unet.image_size ({image_size})"
            )
        return
    if len(resolutions) != 2 or resolutions[0] == resolutions[1]:
        raise ConfigError(
            f"model.data.train.target_resolutions: a super-resolution stage (unet_type {typed.unet_type}) trains on "
            f"[low, high] image pairs, e.g. [64, 256]; got {list(typed.data.train.target_resolutions)}"
        )
    low, high = resolutions
    if high % low or high > image_size or image_size % high:
        raise ConfigError(
            f"model.data.train.target_resolutions: {resolutions} must be [low, high] with high a multiple of low, "
            f"and model.unet.image_size ({image_size}) a multiple of high (high = image_size, or the crop size "
            "when a large stage trains on crops, as sr1024 does on 256x256)"
        )
