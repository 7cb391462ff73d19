"""Diffusion core: preconditioning (EDM, continuous DDPM), losses, noise schedules, samplers,
classifier-free guidance and thresholding, and the training step (loss, per-sample draws, numerical guard,
EMA). Pure PyTorch, no parameters.

All samplers use the variance-exploding form x = x0 + sigma n and a denoiser D(x, sigma) -> x0_hat;
each preconditioning turns a raw network net(x_in, noise_cond, **cond) into one (`precond.denoise`).
"""
from .config import LOSS_TYPES, NOISE_SCHEDULES, PRED_OBJECTIVES, DDPMConfig, EDMConfig
from .ddpm import (
    LOG_SNR_MAX,
    LOG_SNR_MIN,
    LOG_SNR_SCHEDULES,
    ContinuousDDPM,
    alpha_sigma_from_log_snr,
    cosine_log_snr,
    linear_log_snr,
)
from .edm import EDMPreconditioning, edm_coefficients, edm_loss_weight
from .guidance import (
    THRESHOLDS,
    classifier_free_guidance,
    dynamic_threshold,
    static_threshold,
    threshold_denoiser,
)
from .losses import per_sample_loss
from .noise_aug import augment_lowres, lowres_inputs, sampling_augmentation_sigma, training_augmentation_sigma
from .preconditioning import build_preconditioning, preconditioning_config_class
from .samplers import (
    DEFAULT_STEPS,
    SAMPLERS,
    sample_ddpm_ancestral,
    sample_dpmpp_2m,
    sample_heun,
    sampling_sigmas,
)
from .sampling import sample_images
from .schedules import karras_sigmas
from .training import (
    TrainingBatch,
    TrainingDraws,
    batched_draws,
    diffusion_loss,
    draw_per_sample,
    drop_nonfinite_gradients,
    sample_drop_mask,
    step_seed,
    train_step,
    training_loss,
    update_ema,
)

__all__ = [
    "LOSS_TYPES",
    "NOISE_SCHEDULES",
    "PRED_OBJECTIVES",
    "DDPMConfig",
    "EDMConfig",
    "LOG_SNR_MAX",
    "LOG_SNR_MIN",
    "LOG_SNR_SCHEDULES",
    "ContinuousDDPM",
    "alpha_sigma_from_log_snr",
    "cosine_log_snr",
    "linear_log_snr",
    "EDMPreconditioning",
    "edm_coefficients",
    "edm_loss_weight",
    "THRESHOLDS",
    "classifier_free_guidance",
    "dynamic_threshold",
    "sample_drop_mask",
    "static_threshold",
    "threshold_denoiser",
    "per_sample_loss",
    "augment_lowres",
    "lowres_inputs",
    "sampling_augmentation_sigma",
    "training_augmentation_sigma",
    "build_preconditioning",
    "preconditioning_config_class",
    "DEFAULT_STEPS",
    "SAMPLERS",
    "sample_ddpm_ancestral",
    "sample_dpmpp_2m",
    "sample_heun",
    "sampling_sigmas",
    "karras_sigmas",
    "sample_images",
    "TrainingBatch",
    "TrainingDraws",
    "batched_draws",
    "diffusion_loss",
    "draw_per_sample",
    "drop_nonfinite_gradients",
    "step_seed",
    "train_step",
    "training_loss",
    "update_ema",
]
