"""Print a config's UNet parameter count without allocating weights:
`python examples/model_summary.py --config-name base64-500m` -> `unet_params: N`."""
from pathlib import Path

from nemo_imagen.models.cli import check_command_line, exit_on_config_error

CONFIG_DIR = Path(__file__).resolve().parent / "conf"
DEFAULT_CONFIG = "base64-500m"


@exit_on_config_error
def main(cfg) -> None:
    from nemo_imagen.models.config import validate_model_config
    from nemo_imagen.modules import count_parameters

    typed, _ = validate_model_config(cfg.model)
    count = count_parameters(typed.unet_type, typed.unet, typed.conditioning.embed_dim, typed.noise_cond_aug)
    print(f"config: {cfg.name}")
    print(f"unet_type: {typed.unet_type}")
    print(f"unet_params: {count}")
    print(f"unet_params_millions: {count / 1e6:.1f}")


if __name__ == "__main__":
    check_command_line(CONFIG_DIR, DEFAULT_CONFIG)  # a mistyped key or config name fails here, in about a second
    from nemo.core.config import hydra_runner  # NeMo, Lightning and torch: 10-50 s

    hydra_runner(config_path="conf", config_name=DEFAULT_CONFIG)(main)()
