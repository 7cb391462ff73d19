"""FID-CLIP evaluation of a trained cascade, one point per guidance scale:
`python examples/eval_fid_clip.py base_ckpt=base.nemo captions=[captions.json] fid.reference_images=[val2014/]
clip.checkpoint=ViT-L-14.pt` (keys: examples/conf/fid_clip.yaml; README: "FID-CLIP evaluation").

1. Draws `num_images` captions (seeded) and writes them to {output_dir}/captions.txt.
2. For each guidance scale, generates one image per caption into {output_dir}/cfg{scale}/{index:06d}.png, in
   fixed batches (batch b from noise seed + b); `--shard I --num-shards N` makes only shard I's batches, and a
   rerun skips the images that exist. Shards only generate.
3. A run without shards then scores: reference feature statistics (cached), FID and CLIP score per scale,
   written to {output_dir}/fid_clip.csv and plotted in {output_dir}/fid_clip.png.
"""
import sys
from pathlib import Path

from nemo_imagen.models.cli import check_command_line, exit_on_config_error


def hydra_arguments(argv: list) -> list:
    """`--shard I` / `--num-shards N` (as in SLURM scripts) -> the Hydra overrides shard=I / num_shards=N."""
    flags = {"--shard": "shard", "--num-shards": "num_shards"}
    out, index = [], 0
    while index < len(argv):
        name, _, value = argv[index].partition("=")
        if name in flags:
            if not value:
                if index + 1 >= len(argv):
                    raise SystemExit(f"error: {name} needs a value")
                index += 1
                value = argv[index]
            out.append(f"{flags[name]}={value}")
        else:
            out.append(argv[index])
        index += 1
    return out


if __name__ == "__main__":  # a mistyped key or config name fails here, before the imports below (10-50 s)
    sys.argv = [sys.argv[0], *hydra_arguments(sys.argv[1:])]
    check_command_line(Path(__file__).resolve().parent / "conf", "fid_clip")

from nemo_imagen.evaluation.torchvision_compat import ensure_torchvision_importable  # noqa: E402

ensure_torchvision_importable()  # before NeMo, Lightning or open_clip import torchvision (see the module)

import dataclasses  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any, List, Optional  # noqa: E402

import torch  # noqa: E402
from nemo.core.config import hydra_runner  # noqa: E402
from omegaconf import MISSING, OmegaConf  # noqa: E402
from omegaconf.errors import OmegaConfBaseException  # noqa: E402

from nemo_imagen.evaluation.captions import draw_captions, read_captions  # noqa: E402
from nemo_imagen.evaluation.generation import generate_images, image_path, shard_batches  # noqa: E402
from nemo_imagen.models.config import ConfigError  # noqa: E402
from nemo_imagen.images import to_uint8  # noqa: E402
from nemo_imagen.models.pipeline import STAGES, ImagenPipeline, SampleConfig, StageSampling  # noqa: E402
from nemo_imagen.precision import choose_precision  # noqa: E402


@dataclass
class FidConfig:
    reference_images: Any = MISSING  # a path or a list of folders / .tar shards
    resolution: Optional[int] = None
    feature_extractor: str = "auto"
    inception_weights: Optional[str] = None
    stats_cache: Optional[str] = None
    batch_size: int = 64


@dataclass
class ClipConfig:
    model: str = "ViT-L-14"
    checkpoint: str = MISSING
    model_config: Optional[str] = None


@dataclass
class EvalConfig:
    """The keys of examples/conf/fid_clip.yaml."""

    base_ckpt: str = MISSING
    sr256_ckpt: Optional[str] = None
    sr1024_ckpt: Optional[str] = None
    target_resolution: int = 64
    encoder_path: Optional[str] = None
    device: str = "auto"
    captions: Any = MISSING  # a path or a list of paths
    num_images: int = 30000
    caption_seed: int = 0
    output_dir: str = "outputs/fid_clip"
    guidance_scales: List[float] = field(default_factory=lambda: [2.0, 3.0, 4.0, 6.0])
    guide_sr_stages: bool = False
    # one entry per stage; null, missing entries and null keys: the stage's own settings (its model.sample_log)
    samplings: Optional[List[StageSampling]] = field(default_factory=lambda: [StageSampling("edm", 30, 1.0)])
    batch_size: int = 16
    seed: int = 0
    thresholding: Optional[str] = "dynamic"  # null: each stage's own
    precision: Any = "auto"  # sampling's autocast, decided for the machine that generates (as in sample.yaml)
    shard: int = 0
    num_shards: int = 1
    fid: FidConfig = field(default_factory=FidConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)


def eval_config_from(cfg) -> EvalConfig:
    """Validates fid_clip.yaml against EvalConfig: unknown keys, wrong types and missing values name the key."""
    try:
        typed = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(EvalConfig), cfg))
    except OmegaConfBaseException as error:
        raise ConfigError(f"{getattr(error, 'full_key', '') or 'fid_clip'}: {str(error).splitlines()[0]}") from None
    for key in ("captions", "fid.reference_images"):
        owner, name = (typed.fid, "reference_images") if key.startswith("fid.") else (typed, key)
        value = getattr(owner, name)
        paths = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else None
        if not paths or not all(isinstance(path, str) and path for path in paths):
            raise ConfigError(f"{key}: give a path or a list of paths, got {value!r}")
        setattr(owner, name, paths)
    if not typed.guidance_scales:
        raise ConfigError("guidance_scales: give at least one guidance scale")
    if typed.num_shards < 1 or not 0 <= typed.shard < typed.num_shards:
        raise ConfigError(f"shard: {typed.shard} is not in 0..num_shards-1 (num_shards {typed.num_shards})")
    return typed


def sample_config(cfg: EvalConfig) -> SampleConfig:
    """The pipeline's config: the cascade's checkpoints and how each stage samples."""
    return SampleConfig(base_ckpt=cfg.base_ckpt, sr256_ckpt=cfg.sr256_ckpt, sr1024_ckpt=cfg.sr1024_ckpt,
                        target_resolution=cfg.target_resolution, samplings=cfg.samplings,
                        encoder_path=cfg.encoder_path, thresholding=cfg.thresholding, device=cfg.device,
                        batch_size=cfg.batch_size, seed=cfg.seed, precision=cfg.precision)


def stage_samplings(cfg: EvalConfig, guidance_scale: float) -> List[StageSampling]:
    """One entry per stage: the base stage gets `guidance_scale`; SR stages keep their own cfg unless
    guide_sr_stages. A stage without a `samplings` entry, and each key an entry leaves null, samples as its
    checkpoint's model.sample_log says (ImagenPipeline.stage_samplings), as in sample.py."""
    given = list(cfg.samplings or [])
    stages = sum(resolution <= cfg.target_resolution for _, resolution in STAGES)
    entries = given + [StageSampling() for _ in range(stages - len(given))]
    return [dataclasses.replace(sampling, cfg=guidance_scale) if index == 0 or cfg.guide_sr_stages else sampling
            for index, sampling in enumerate(entries)]


def _device(cfg: EvalConfig) -> torch.device:
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)


def scale_dir(output_dir: Path, guidance_scale: float) -> Path:
    return output_dir / f"cfg{guidance_scale:g}"


def _write_once(path: Path, content: str, what: str) -> None:
    """Writes `content`, or checks that an earlier run (or another shard) wrote the same."""
    if path.is_file():
        if path.read_text(encoding="utf-8") != content:
            raise ConfigError(f"{what}: {path} was written by a run with other settings; use another output_dir")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # shards may write at once
    temporary.write_text(content, encoding="utf-8")
    temporary.replace(path)


def generation_settings(cfg: EvalConfig) -> str:
    """Everything that decides the pixels of an image: a rerun or shard with other values must not mix in."""
    paths = {key: str(Path(value).resolve()) if value else None
             for key, value in (("base_ckpt", cfg.base_ckpt), ("sr256_ckpt", cfg.sr256_ckpt), ("sr1024_ckpt", cfg.sr1024_ckpt))}
    # the autocast this machine samples with (precision auto differs between machines, and so do the pixels)
    precision, _ = choose_precision(cfg.precision, _device(cfg).type)
    settings = dict(paths, target_resolution=cfg.target_resolution, encoder_path=cfg.encoder_path,
                    samplings=[dataclasses.asdict(sampling) for sampling in cfg.samplings or []],
                    guide_sr_stages=cfg.guide_sr_stages, batch_size=cfg.batch_size, seed=cfg.seed,
                    thresholding=cfg.thresholding, precision=str(precision))
    return json.dumps(settings, indent=1, sort_keys=True) + "\n"


def generate(cfg: EvalConfig, captions: List[str], output_dir: Path) -> None:
    num_batches = -(-len(captions) // cfg.batch_size)
    batches = shard_batches(num_batches, cfg.shard, cfg.num_shards)
    indices = range(batches.start * cfg.batch_size, min(batches.stop * cfg.batch_size, len(captions)))
    todo = [guidance_scale for guidance_scale in cfg.guidance_scales
            if not all(image_path(scale_dir(output_dir, guidance_scale), index).is_file() for index in indices)]
    for guidance_scale in cfg.guidance_scales:
        if guidance_scale not in todo:
            print(f"cfg {guidance_scale:g}: all {len(indices)} images of this shard exist, skipped")
    if not todo:
        return
    pipeline = ImagenPipeline.from_config(sample_config(cfg))
    for guidance_scale in todo:
        samplings = stage_samplings(cfg, guidance_scale)
        for _, line in pipeline.stage_samplings(samplings, cfg.thresholding):
            print(f"cfg {guidance_scale:g}: {line}")

        def generate_batch(batch_captions, batch_index):
            images = pipeline(batch_captions, samplings, batch_size=len(batch_captions),
                              seed=cfg.seed + batch_index, thresholding=cfg.thresholding, progress=False)
            return to_uint8(images)

        result = generate_images(scale_dir(output_dir, guidance_scale), captions, generate_batch,
                                 batch_size=cfg.batch_size, shard=cfg.shard, num_shards=cfg.num_shards, desc=f"cfg {guidance_scale:g}")
        print(f"cfg {guidance_scale:g}: generated {result.generated} images, skipped {result.skipped} that exist")


def score(cfg: EvalConfig, captions: List[str], output_dir: Path):
    """FID and CLIP score per guidance scale -> the CSV rows (also written, with the plot)."""
    from nemo_imagen.evaluation.clip_score import ClipScorer
    from nemo_imagen.evaluation.fid import build_feature_extractor, extractor_label
    from nemo_imagen.evaluation.metrics import reference_stats, score_folder
    from nemo_imagen.evaluation.report import Row, plot_fid_clip, write_csv

    device = _device(cfg)
    try:
        extractor = build_feature_extractor(cfg.fid.feature_extractor, cfg.fid.inception_weights).to(device)
        clip = ClipScorer(cfg.clip.model, cfg.clip.checkpoint, device, cfg.clip.model_config)
        if not extractor.standard_fid:
            print(f"warning: FID with {extractor.name} features is NOT standard FID (give fid.inception_weights)")
        resolution = cfg.fid.resolution or cfg.target_resolution
        cache = Path(cfg.fid.stats_cache or output_dir / "reference_stats" / f"{extractor.name}_{resolution}px.npz")
        reference = reference_stats(cfg.fid.reference_images, resolution, extractor, cache,
                                    batch_size=cfg.fid.batch_size, device=device)
    except ValueError as error:  # the lower layers name the key
        raise ConfigError(str(error)) from None
    rows = []
    for guidance_scale in cfg.guidance_scales:
        scores = score_folder(scale_dir(output_dir, guidance_scale), captions, reference, extractor, clip,
                              resolution=resolution, batch_size=cfg.fid.batch_size, device=device,
                              desc=f"scoring cfg {guidance_scale:g}")
        label = extractor_label(extractor)
        rows.append(Row(guidance_scale, scores.fid, scores.clip_score, label, clip.name, scores.count))
        print(f"cfg {guidance_scale:g}: FID {scores.fid:.3f} ({label}), CLIP score {scores.clip_score:.4f}")
    csv_path = write_csv(rows, output_dir / "fid_clip.csv")
    plot = plot_fid_clip(rows, output_dir / "fid_clip.png")
    print(f"wrote {csv_path} and {plot}")
    return rows


def run_evaluation(cfg: EvalConfig):
    """The whole evaluation for a validated config; returns the CSV rows, or None for a shard (generation only)."""
    output_dir = Path(cfg.output_dir)
    try:
        captions = draw_captions(read_captions(cfg.captions), cfg.num_images, cfg.caption_seed)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    _write_once(output_dir / "captions.txt", "".join(f"{caption}\n" for caption in captions), "captions")
    _write_once(output_dir / "generation_settings.json", generation_settings(cfg), "generation settings")
    generate(cfg, captions, output_dir)
    if cfg.num_shards > 1:
        print(f"shard {cfg.shard} of {cfg.num_shards} done; once all are, run without shards to score")
        return None
    return score(cfg, captions, output_dir)


@hydra_runner(config_path="conf", config_name="fid_clip")
@exit_on_config_error
def main(cfg) -> None:
    run_evaluation(eval_config_from(cfg))


if __name__ == "__main__":
    main()
