"""Typed configs for the `model.preconditioning` YAML block.

`model.preconditioning_type` picks the dataclass: `EDM` -> `EDMConfig`, `DDPM` -> `DDPMConfig`
(see `nemo_imagen.diffusion.preconditioning_config_class`). Both are plain dataclasses with scalar
fields, so `OmegaConf.structured(EDMConfig)` accepts them; validation runs in `__post_init__`, i.e.
when the dataclass is instantiated (`EDMConfig(**block)` or `OmegaConf.to_object(...)`), and every
error message starts with the offending key.
"""
from dataclasses import dataclass

LOSS_TYPES = ("l1", "l2", "huber")
PRED_OBJECTIVES = ("noise", "x_start")
NOISE_SCHEDULES = ("cosine", "linear")


def _check_choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"preconditioning.{key}: {value!r} is not one of {', '.join(allowed)}")


def _check_positive(key: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"preconditioning.{key}: must be > 0, got {value!r}")


@dataclass
class EDMConfig:
    """EDM preconditioning, training noise and sampling range (Karras et al. 2022, Table 1).

    loss_type: `l2` (the paper's weighted MSE), `l1` or `huber`; see `EDMPreconditioning.loss`.
    sigma_data: standard deviation of the training images (0.5 for images in [-1, 1]).
    p_mean, p_std: training noise levels are drawn as ln(sigma) ~ N(p_mean, p_std^2).
    sigma_min, sigma_max, rho: the sampling range and the Karras schedule's exponent.
    """

    loss_type: str = "l2"
    sigma_data: float = 0.5
    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0

    def __post_init__(self):
        _check_choice("loss_type", self.loss_type, LOSS_TYPES)
        _check_positive("sigma_data", self.sigma_data)
        _check_positive("p_std", self.p_std)
        _check_positive("sigma_min", self.sigma_min)
        if not self.sigma_max > self.sigma_min:
            raise ValueError(
                f"preconditioning.sigma_max: must be > sigma_min ({self.sigma_min!r}), got {self.sigma_max!r}"
            )
        _check_positive("rho", self.rho)


@dataclass
class DDPMConfig:
    """Continuous-time DDPM (Imagen's formulation: t ~ U(0, 1), the UNet sees the log-SNR).

    loss_type: `l1`, `l2` or `huber` on the prediction error (unweighted).
    pred_objective: what the UNet predicts, `noise` (eps) or `x_start` (x0).
    noise_schedule: `cosine` (Nichol & Dhariwal) or `linear` (Ho et al.'s betas 1e-4 to 0.02, made
        continuous); see `nemo_imagen.diffusion.ddpm`.
    timesteps: the default number of sampling steps of the DDPM ancestral sampler (the time grid
        t = 1, 1 - 1/timesteps, ..., 1/timesteps). Training is continuous in t and does not use it.
    """

    loss_type: str = "l2"
    pred_objective: str = "noise"
    noise_schedule: str = "cosine"
    timesteps: int = 1000

    def __post_init__(self):
        _check_choice("loss_type", self.loss_type, LOSS_TYPES)
        _check_choice("pred_objective", self.pred_objective, PRED_OBJECTIVES)
        _check_choice("noise_schedule", self.noise_schedule, NOISE_SCHEDULES)
        if isinstance(self.timesteps, bool) or not isinstance(self.timesteps, int) or self.timesteps < 1:
            raise ValueError(f"preconditioning.timesteps: must be an integer >= 1, got {self.timesteps!r}")
