"""Train one Imagen stage: `python examples/train.py --config-name base64-500m [key=value ...]`."""
from nemo.core.config import hydra_runner
from nemo.utils import logging

from nemo_imagen.models.imagen import MegatronImagen
from nemo_imagen.models.trainer_builder import build_trainer, exit_on_config_error


@hydra_runner(config_path="conf", config_name="base64-500m")
@exit_on_config_error
def main(cfg) -> None:
    trainer = build_trainer(cfg)
    model = MegatronImagen(cfg.model, trainer)
    trainer.fit(model)
    log_dir = trainer.log_dir or "."
    logging.info(f"Training finished; checkpoints and the .nemo are under {log_dir}/checkpoints")


if __name__ == "__main__":
    main()
