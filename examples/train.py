"""Train one Imagen stage: `python examples/train.py --config-name base64-500m [key=value ...]`.

Ends by writing the `.nemo` (exp_manager) and a grid of samples for `model.sample_log.prompts`, and prints
both paths. A top-level `demo_data` block (quickstart.yaml) first generates the demo shards if missing (and, with
`precache_dir`, their copies with precached caption embeddings)."""
from pathlib import Path

from nemo_imagen.models.cli import check_command_line, exit_on_config_error

CONFIG_DIR = Path(__file__).resolve().parent / "conf"
DEFAULT_CONFIG = "base64-500m"


@exit_on_config_error
def main(cfg) -> None:
    from nemo_imagen.data.demo import prepare_demo_dataset
    from nemo_imagen.models.imagen import MegatronImagen
    from nemo_imagen.models.sample_grid import save_sample_grid
    from nemo_imagen.models.trainer_builder import build_trainer

    trainer = build_trainer(cfg)  # checks the `model` block first: a mistake there builds nothing
    demo = cfg.get("demo_data")
    if demo:
        text = cfg.model.conditioning
        prepare_demo_dataset(
            demo.output_dir,
            num_samples=demo.num_samples,
            seed=demo.seed,
            image_size=demo.get("image_size", 64),
            precache_dir=demo.get("precache_dir"),
            encoder_path=text.get("encoder_path"),
            precached_key=text.get("precached_key"),
            token_length=text.token_length,
            kind=demo.get("kind", "demo"),  # "scenes": two shapes and their relation (quickstart-scenes.yaml)
        )
    model = MegatronImagen(cfg.model, trainer)
    trainer.fit(model)
    if trainer.global_rank == 0:
        checkpoints = Path(trainer.log_dir or ".") / "checkpoints"
        grid = save_sample_grid(model, checkpoints.parent / "samples_final.png")
        for nemo in sorted(checkpoints.glob("*.nemo")):
            print(f"model: {nemo}")
        if grid:
            print(f"samples: {grid}")


if __name__ == "__main__":
    check_command_line(CONFIG_DIR, DEFAULT_CONFIG)  # a mistyped key or config name fails here, in about a second
    from nemo.core.config import hydra_runner  # NeMo, Lightning and torch: 10-50 s

    hydra_runner(config_path="conf", config_name=DEFAULT_CONFIG)(main)()
