"""Sample images from trained stages: `python examples/sample.py base_ckpt=run.nemo prompts='[a red circle]'`;
add `sr256_ckpt=... target_resolution=256` (and `sr1024_ckpt=... target_resolution=1024`) for the cascade.

Writes {output_dir}/{prompt_index:05d}_{image_index:02d}.png, {output_dir}/grid.png (a row per prompt) and
{output_dir}/prompts.txt (the prompts in index order)."""
from pathlib import Path

from nemo_imagen.models.cli import check_command_line, exit_on_config_error

CONFIG_DIR = Path(__file__).resolve().parent / "conf"
DEFAULT_CONFIG = "sample"


@exit_on_config_error
def main(cfg) -> None:
    from nemo_imagen.images import image_grid, save_png, to_uint8
    from nemo_imagen.models.pipeline import ImagenPipeline, sample_config_from
    from nemo_imagen.models.prompts import read_prompts

    cfg = sample_config_from(cfg)
    prompts = read_prompts(cfg)
    pipeline = ImagenPipeline.from_config(cfg)
    samplings = pipeline.stage_samplings(cfg.samplings, cfg.thresholding)  # what is given, else each checkpoint's own
    for _, line in samplings:
        print(line)
    images = pipeline(
        prompts,
        [sampling for sampling, _ in samplings],
        num_images_per_prompt=cfg.num_images_per_prompt,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        thresholding=cfg.thresholding,
    )
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "prompts.txt").write_text("".join(f"{prompt}\n" for prompt in prompts), encoding="utf-8")
    for index, picture in enumerate(to_uint8(images)):
        prompt_index, image_index = divmod(index, cfg.num_images_per_prompt)
        save_png(picture, out / f"{prompt_index:05d}_{image_index:02d}.png")
    grid = save_png(image_grid(images, nrow=cfg.num_images_per_prompt), out / "grid.png")
    print(f"wrote {len(images)} images and {grid}")


if __name__ == "__main__":
    check_command_line(CONFIG_DIR, DEFAULT_CONFIG)  # a mistyped key or config name fails here, in about a second
    from nemo.core.config import hydra_runner  # NeMo, Lightning and torch: 10-50 s

    hydra_runner(config_path="conf", config_name=DEFAULT_CONFIG)(main)()
