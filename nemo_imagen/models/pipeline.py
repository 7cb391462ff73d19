"""Sampling a trained cascade: prompts in, images out, one stage after another."""
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from tqdm import tqdm

from nemo_imagen.models.config import ConfigError
from nemo_imagen.models.imagen import MegatronImagen
from nemo_imagen.text.encoders import TextEncoder


@dataclass
class StageSampling:
    """How one stage samples: `sampler` edm | ddpm | dpmpp, number of `steps`, guidance scale `cfg`."""

    sampler: str = "edm"
    steps: int = 30
    cfg: float = 4.0


@dataclass
class SampleConfig:
    """The keys of examples/conf/sample.yaml."""

    base_ckpt: Optional[str] = None
    prompts: List[str] = field(default_factory=list)
    prompts_file: Optional[str] = None
    num_images_per_prompt: int = 4
    batch_size: int = 16
    seed: int = 0
    output_dir: str = "outputs/samples"
    target_resolution: int = 64
    samplings: List[StageSampling] = field(default_factory=lambda: [StageSampling()])
    encoder_path: Optional[str] = None  # overrides the checkpoint's conditioning.encoder_path
    thresholding: str = "dynamic"
    device: str = "auto"


def load_stage(path: str, device: torch.device) -> MegatronImagen:
    """Restores a `.nemo` file; a missing or unreadable file is a clear error, never random weights."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if file.suffix != ".nemo":
        raise ConfigError(f"base_ckpt: {path} is not a .nemo file (export a .ckpt with examples/export.py)")
    model = MegatronImagen.restore_from(str(file), map_location=device, strict=True)
    return model.to(device).eval()


def read_prompts(cfg: SampleConfig) -> List[str]:
    prompts = list(cfg.prompts)
    if cfg.prompts_file:
        text = Path(cfg.prompts_file).read_bytes().decode("utf-8", errors="replace")
        prompts += [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ConfigError("prompts: give a list of prompts or a prompts_file with one prompt per line")
    return prompts


class ImagenPipeline:
    """Runs the stages of a cascade on prompts. Each stage gets its own `StageSampling`."""

    def __init__(self, stages: List[MegatronImagen], encoder: Optional[TextEncoder] = None):
        self.stages = stages
        if encoder is not None:
            for stage in stages:
                stage.set_text_encoder(encoder)

    @classmethod
    def from_config(cls, cfg: SampleConfig) -> "ImagenPipeline":
        auto = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(auto if cfg.device == "auto" else cfg.device)
        if not cfg.base_ckpt:
            raise ConfigError("base_ckpt: path of the base stage's .nemo file is required")
        base = load_stage(cfg.base_ckpt, device)
        if cfg.target_resolution != base.typed_cfg.unet.image_size:
            raise ConfigError(
                f"target_resolution: {cfg.target_resolution}, but the base stage makes "
                f"{base.typed_cfg.unet.image_size}x{base.typed_cfg.unet.image_size} images"
            )
        encoder = TextEncoder.from_path(cfg.encoder_path, device=str(device)) if cfg.encoder_path else None
        return cls([base], encoder)

    @torch.no_grad()
    def __call__(
        self,
        prompts: List[str],
        samplings: List[StageSampling],
        *,
        num_images_per_prompt: int = 1,
        batch_size: int = 16,
        seed: int = 0,
        thresholding: str = "dynamic",
    ) -> torch.Tensor:
        """-> images [len(prompts) * num_images_per_prompt, C, H, W] in [-1, 1], prompt-major order.

        Batch k starts its noise from seed + k, so results do not depend on the device's other work."""
        if len(samplings) < len(self.stages):
            raise ConfigError(f"samplings: {len(self.stages)} stages need {len(self.stages)} entries, got {len(samplings)}")
        base = self.stages[0]
        text_embed, text_mask = base.encode_prompts(prompts)
        text_embed = text_embed.repeat_interleave(num_images_per_prompt, 0)
        text_mask = text_mask.repeat_interleave(num_images_per_prompt, 0)
        outputs = []
        starts = range(0, text_embed.shape[0], batch_size)
        for batch_index, start in enumerate(tqdm(starts, desc="sampling", unit="batch")):
            generator = torch.Generator(device=base.device).manual_seed(seed + batch_index)
            stage_sampling = samplings[0]
            images = base.sample(
                text_embed[start : start + batch_size],
                text_mask[start : start + batch_size],
                sampler=stage_sampling.sampler,
                steps=stage_sampling.steps,
                cfg_scale=stage_sampling.cfg,
                thresholding=thresholding,
                generator=generator,
            )
            outputs.append(images.cpu())
        return torch.cat(outputs)


def sample_config_from(cfg) -> SampleConfig:
    """Validates sample.yaml against SampleConfig: unknown keys and wrong types name the key."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(SampleConfig), cfg))
    except OmegaConfBaseException as error:
        raise ConfigError(f"{getattr(error, 'full_key', '') or 'sample'}: {str(error).splitlines()[0]}") from None
