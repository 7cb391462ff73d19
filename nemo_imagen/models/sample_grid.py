"""The training run's sample grids: the fixed prompts of `model.sample_log`, sampled with its settings, to
TensorBoard every `every_n_steps` steps and to `samples_final.png` at the end of train.py."""
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch

from nemo_imagen.images import image_grid, save_png


def log_sample_grid(model) -> None:
    """Samples the fixed prompts and writes a grid to TensorBoard (rank 0 only)."""
    logger = model.logger
    if model.global_rank != 0 or logger is None or not hasattr(logger.experiment, "add_image"):
        return
    sampled = fixed_prompt_grid(model)
    if sampled is not None:
        prompts, grid = sampled
        logger.experiment.add_image("samples", grid, model.trainer.global_step, dataformats="HWC")
        logger.experiment.add_text("sample_prompts", " | ".join(prompts), model.trainer.global_step)


def save_sample_grid(model, path) -> Optional[Path]:
    """Writes the fixed prompts' sample grid (one row per prompt) as a PNG; None if there are no prompts."""
    sampled = fixed_prompt_grid(model)
    return save_png(sampled[1], path) if sampled is not None else None


def fixed_prompt_grid(model) -> Optional[Tuple[List[str], np.ndarray]]:
    """Samples `sample_log.prompts` (or, without a text encoder, the first training batch's captions)
    -> (prompts, grid [H, W, C] uint8 with one row per prompt).

    A super-resolution stage upscales the first training batch's low-res images with their captions;
    each row then starts with the bicubic upscale of its input, for comparison."""
    log_cfg = model.typed_cfg.sample_log
    lowres = None
    if model.text_encoder is not None and log_cfg.prompts and not model.typed_cfg.is_super_resolution:
        prompts = list(log_cfg.prompts)
        text_embed, text_mask = model.encode_prompts(prompts)
    elif model.first_batch_text is not None:
        prompts, text_embed, text_mask, lowres = model.first_batch_text
    else:
        return None
    repeat = log_cfg.images_per_prompt
    generator = torch.Generator(device=model.device).manual_seed(log_cfg.seed)
    trainer = getattr(model, "_trainer", None)
    images = model.sample(
        text_embed.repeat_interleave(repeat, 0),
        text_mask.repeat_interleave(repeat, 0),
        lowres=None if lowres is None else lowres.repeat_interleave(repeat, 0),
        sampler=log_cfg.sampler,
        steps=log_cfg.steps,
        guidance_scale=log_cfg.cfg,
        thresholding=log_cfg.thresholding,
        generator=generator,
        # the training run's resolved precision; without a trainer, what suits this machine
        precision=trainer.precision if trainer is not None else "auto",
    )
    if lowres is None:
        return prompts, image_grid(images, nrow=repeat)
    upscaled = torch.nn.functional.interpolate(lowres.float(), size=images.shape[-2:], mode="bicubic").clamp(-1, 1)
    rows = torch.cat([upscaled.cpu()[:, None], images.cpu().view(len(prompts), repeat, *images.shape[1:])], dim=1)
    return prompts, image_grid(rows.flatten(0, 1), nrow=repeat + 1)
