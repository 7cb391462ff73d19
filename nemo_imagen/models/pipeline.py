"""Sampling a trained cascade: prompts in, images out, one stage after another (64 -> 256 -> 1024)."""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from tqdm import tqdm

from nemo_imagen.models.checkpoint_checks import check_checkpoint_file, check_stage, check_state_dict
from nemo_imagen.models.config import ConfigError
from nemo_imagen.models.imagen import MegatronImagen
from nemo_imagen.models.prompts import warn_long_prompts
from nemo_imagen.precision import choose_precision
from nemo_imagen.text.encoders import TextEncoder

# (config key, resolution after that stage) in cascade order; target_resolution picks a prefix.
STAGES = (("base_ckpt", 64), ("sr256_ckpt", 256), ("sr1024_ckpt", 1024))


# the keys of a StageSampling that a checkpoint's `model.sample_log` also holds
SAMPLE_LOG_KEYS = ("sampler", "steps", "cfg", "thresholding")


@dataclass
class StageSampling:
    """How one stage samples: `sampler` edm | ddpm | dpmpp, number of `steps`, guidance scale `cfg`, x0
    `thresholding` dynamic | static | none; a key left null is the stage's own, from its checkpoint's
    `model.sample_log`. For a super-resolution stage trained with noise-conditioning augmentation,
    `noise_cond_aug_sigma` is the augmentation level of its low-res input (null = the stage's
    `model.noise_cond_aug_sigma`)."""

    sampler: Optional[str] = None
    steps: Optional[int] = None
    cfg: Optional[float] = None
    noise_cond_aug_sigma: Optional[float] = None
    thresholding: Optional[str] = None


@dataclass
class SampleConfig:
    """The keys of examples/conf/sample.yaml."""

    base_ckpt: str = MISSING  # required, as sample.yaml's `???` says
    sr256_ckpt: Optional[str] = None
    sr1024_ckpt: Optional[str] = None
    target_resolution: int = 64
    prompts: List[str] = field(default_factory=list)
    prompts_file: Optional[str] = None
    num_images_per_prompt: int = 4
    batch_size: int = 16
    seed: int = 0
    output_dir: str = "outputs/samples"
    # one entry per stage in cascade order; null, missing entries and null keys: the stage's own settings
    samplings: Optional[List[StageSampling]] = None
    encoder_path: Optional[str] = None  # overrides every stage's conditioning.encoder_path
    thresholding: Optional[str] = None  # every stage's thresholding; null: each stage's own
    device: str = "auto"
    precision: Any = "auto"  # sampling's autocast: auto = what suits the device (nemo_imagen/precision.py)


def load_stage(path: str, device: torch.device, key: str = "base_ckpt") -> MegatronImagen:
    """Restores one stage from a `.nemo` file, or from a Lightning `.ckpt` written by examples/train.py (its
    model config travels in the checkpoint's hyper-parameters; EMA weights are kept and used for sampling).

    A missing, unreadable or mismatched file is a clear error naming `key`, never random weights."""
    file = check_checkpoint_file(path, key)
    try:
        if file.suffix == ".nemo":
            model = MegatronImagen.restore_from(str(file), map_location=device, strict=True)
        else:
            model = model_from_lightning_checkpoint(file, key)
    except ConfigError:
        raise
    except Exception as error:  # a truncated or foreign file fails deep inside tarfile / pickle / torch.load
        raise ConfigError(
            f"{key}: cannot read {path} ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
            "is the file complete and written by examples/train.py or examples/export.py?"
        ) from None
    return model.to(device).eval()


def model_from_lightning_checkpoint(path: Path, key: str = "ckpt") -> MegatronImagen:
    """Builds the model saved in a Lightning checkpoint (config from its hyper-parameters) and loads its
    weights strictly, so a checkpoint of another architecture fails instead of leaving random weights."""
    checkpoint = torch.load(str(path), map_location="cpu", weights_only=False)
    cfg = (checkpoint.get("hyper_parameters") or {}).get("cfg")
    if cfg is None or "state_dict" not in checkpoint:
        raise ConfigError(f"{key}: {path} is not a checkpoint written by examples/train.py (no model config or weights)")
    model = MegatronImagen(cfg)
    check_state_dict(model, checkpoint["state_dict"], key, path)
    model.load_state_dict(checkpoint["state_dict"], strict=True)
    return model


class ImagenPipeline:
    """Runs the stages of a cascade on prompts: the base stage makes images from text, each
    super-resolution stage upscales the previous stage's images. Each stage gets its own `StageSampling`;
    prompts are embedded once per distinct text encoder (and token length).

    `precision` is the stages' autocast, decided here for the device they run on (`auto`: bf16 where bf16 is
    native, else float32; see nemo_imagen/precision.py), whatever precision they were trained with; an
    explicit value is honoured. `precision_reason` says why, in one line."""

    def __init__(self, stages: List[MegatronImagen], encoder: Optional[TextEncoder] = None, precision: Any = "auto"):
        check_cascade(stages)
        self.stages = stages
        self.precision, self.precision_reason = choose_precision(precision, stages[0].device.type)
        if encoder is not None:
            for stage in stages:
                stage.set_text_encoder(encoder)
        else:
            share_text_encoders(stages)

    @classmethod
    def from_config(cls, cfg: SampleConfig) -> "ImagenPipeline":
        auto = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(auto if cfg.device == "auto" else cfg.device)
        resolutions = [resolution for _, resolution in STAGES]
        if cfg.target_resolution not in resolutions:
            raise ConfigError(f"target_resolution: {cfg.target_resolution} is not one of {resolutions}")
        stages = []
        for key, resolution in STAGES:
            if resolution > cfg.target_resolution:
                break
            path = getattr(cfg, key)
            if not path:
                raise ConfigError(f"{key}: target_resolution {cfg.target_resolution} needs this stage's .nemo or .ckpt file")
            stage = load_stage(path, device, key)
            check_stage_role(stage, key, resolution)
            stages.append(stage)
        encoder = TextEncoder.from_path(cfg.encoder_path, device=str(device)) if cfg.encoder_path else None
        pipeline = cls(stages, encoder, precision=cfg.precision)
        print(f"sampling {pipeline.precision_reason}")
        return pipeline

    def stage_samplings(
        self, samplings: Optional[List[StageSampling]] = None, thresholding: Optional[str] = None
    ) -> List[Tuple[StageSampling, str]]:
        """Each stage's complete sampling settings, and one line saying which they are and where they came from.

        Stage i uses entry i of `samplings`; a stage without an entry (`samplings` null, empty or shorter than
        the cascade), and each key an entry leaves null, takes the stage's own setting: its checkpoint's
        `model.sample_log` (sampler, steps, cfg, thresholding). `thresholding`, when given, applies to every
        stage whose entry does not set its own. `noise_cond_aug_sigma` stays null unless given: `sample`
        then uses the stage's `model.noise_cond_aug_sigma`."""
        given = list(samplings or [])
        resolved = []
        for index, stage in enumerate(self.stages):
            entry = given[index] if index < len(given) else StageSampling()
            own = stage.typed_cfg.sample_log
            values, given_keys = {}, []
            for key in SAMPLE_LOG_KEYS:
                value = getattr(entry, key)
                if value is None and key == "thresholding":
                    value = thresholding
                if value is None:
                    value = getattr(own, key)
                else:
                    given_keys.append(key)
                values[key] = value
            sampling = StageSampling(**values, noise_cond_aug_sigma=entry.noise_cond_aug_sigma)
            own_keys = [key for key in SAMPLE_LOG_KEYS if key not in given_keys]
            line = (f"{STAGES[index][0] if index < len(STAGES) else f'stage {index}'}: sampler {sampling.sampler}, "
                    f"steps {sampling.steps}, cfg {sampling.cfg:g}, thresholding {sampling.thresholding}")
            if sampling.noise_cond_aug_sigma is not None:
                line += f", noise_cond_aug_sigma {sampling.noise_cond_aug_sigma:g}"
            if not given_keys:
                line += " (from the checkpoint's model.sample_log)"
            elif not own_keys:
                line += " (from the command line)"
            else:
                line += f" ({', '.join(given_keys)} from the command line; {', '.join(own_keys)} from the checkpoint)"
            resolved.append((sampling, line))
        return resolved

    @torch.no_grad()
    def __call__(
        self,
        prompts: List[str],
        samplings: Optional[List[StageSampling]] = None,
        *,
        num_images_per_prompt: int = 1,
        batch_size: int = 16,
        seed: int = 0,
        thresholding: Optional[str] = None,
        progress: bool = True,
    ) -> torch.Tensor:
        """-> images [len(prompts) * num_images_per_prompt, C, H, W] in [-1, 1] at the last stage's size,
        prompt-major order. Each stage samples with `stage_samplings(samplings, thresholding)`: what is given,
        else the stage's own settings from its checkpoint.

        Batch k draws all its noise, stage after stage, from seed + k, so results do not depend on the
        device's other work or on how many batches run."""
        samplings = [sampling for sampling, _ in self.stage_samplings(samplings, thresholding)]
        texts = [
            (embed.repeat_interleave(num_images_per_prompt, 0), mask.repeat_interleave(num_images_per_prompt, 0))
            for embed, mask in self.embed_prompts(prompts)
        ]
        outputs = []
        total = len(prompts) * num_images_per_prompt
        starts = range(0, total, batch_size)
        for batch_index, start in enumerate(tqdm(starts, desc="sampling", unit="batch", disable=not progress)):
            generator = torch.Generator(device=self.stages[0].device).manual_seed(seed + batch_index)
            images = None
            for stage, (text_embed, text_mask), stage_sampling in zip(self.stages, texts, samplings):
                images = stage.sample(
                    text_embed[start : start + batch_size],
                    text_mask[start : start + batch_size],
                    lowres=images,
                    noise_cond_aug_sigma=stage_sampling.noise_cond_aug_sigma,
                    sampler=stage_sampling.sampler,
                    steps=stage_sampling.steps,
                    guidance_scale=stage_sampling.cfg,
                    thresholding=stage_sampling.thresholding,
                    generator=generator,
                    precision=self.precision,
                )
            outputs.append(images.cpu())
        return torch.cat(outputs)

    def embed_prompts(self, prompts: List[str]) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """(text_embed, text_mask) for each stage, computed once per distinct (encoder, token length)."""
        cache: Dict[Tuple[int, int], Tuple[torch.Tensor, torch.Tensor]] = {}
        embeddings = []
        for stage in self.stages:
            key = (id(stage.text_encoder), stage.typed_cfg.conditioning.token_length)
            if key not in cache:
                if stage.text_encoder is not None:
                    warn_long_prompts(prompts, stage.text_encoder.tokenizer, key[1])
                cache[key] = stage.encode_prompts(prompts)
            embeddings.append(cache[key])
        return embeddings


def check_stage_role(stage: MegatronImagen, key: str, resolution: int) -> None:
    """The file given as `key` must hold that stage: a base model for base_ckpt, an SR model (`sr` or
    `sr-unet`) for an SR key, making `resolution` images (catches swapped or wrong files before sampling)."""
    if key == STAGES[0][0]:
        check_stage(stage, key, unet_type="base", image_size=resolution)
        return
    if not stage.typed_cfg.is_super_resolution:
        raise ConfigError(
            f"{key}: expected a super-resolution stage (unet_type sr or sr-unet), but the checkpoint holds a "
            f"{stage.typed_cfg.unet_type!r} stage"
        )
    check_stage(stage, key, image_size=resolution)


def check_cascade(stages: List[MegatronImagen]) -> None:
    """Each SR stage must take the previous stage's output size as its low-res input."""
    if not stages or stages[0].typed_cfg.is_super_resolution:
        raise ConfigError("base_ckpt: a cascade starts with a base stage (unet_type base)")
    for previous, stage in zip(stages, stages[1:]):
        typed = stage.typed_cfg
        made = previous.typed_cfg.unet.image_size
        if not typed.is_super_resolution or typed.low_resolution != made:
            raise ConfigError(
                f"cascade: a stage of unet_type {typed.unet_type} upscaling {typed.low_resolution} images cannot "
                f"follow a stage making {made}x{made} images"
            )


def share_text_encoders(stages: List[MegatronImagen]) -> None:
    """Stages naming the same encoder_path use one loaded encoder (loaded once, embeds once)."""
    loaded: Dict[str, TextEncoder] = {}
    for stage in stages:
        path = stage.typed_cfg.conditioning.encoder_path
        if not path:
            continue
        if path in loaded:
            stage.set_text_encoder(loaded[path])
        elif stage.text_encoder is not None:
            loaded[path] = stage.text_encoder


def sample_config_from(cfg) -> SampleConfig:
    """Validates sample.yaml against SampleConfig: unknown keys and wrong types name the key."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(SampleConfig), cfg))
    except OmegaConfBaseException as error:
        raise ConfigError(f"{getattr(error, 'full_key', '') or 'sample'}: {str(error).splitlines()[0]}") from None
