"""Print a config's UNet parameter count without allocating weights:
`python examples/model_summary.py --config-name base64-500m` -> `unet_params: N`."""
from nemo.core.config import hydra_runner

from nemo_imagen.models.config import validate_model_config
from nemo_imagen.models.trainer_builder import exit_on_config_error
from nemo_imagen.modules import count_parameters


@hydra_runner(config_path="conf", config_name="base64-500m")
@exit_on_config_error
def main(cfg) -> None:
    typed, _ = validate_model_config(cfg.model)
    count = count_parameters(typed.unet_type, typed.unet, typed.conditioning.embed_dim, typed.noise_cond_aug)
    print(f"config: {cfg.name}")
    print(f"unet_type: {typed.unet_type}")
    print(f"unet_params: {count}")
    print(f"unet_params_millions: {count / 1e6:.1f}")


if __name__ == "__main__":
    main()
