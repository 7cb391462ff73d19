"""UNets and their building blocks (pure torch.nn)."""

from nemo_imagen.modules.config import EfficientUNetConfig, UNetConfig
from nemo_imagen.modules.efficient_unet import EfficientUNet
from nemo_imagen.modules.factory import SUPER_RESOLUTION_UNET_TYPES, UNET_TYPES, build_unet, count_parameters, unet_config_class
from nemo_imagen.modules.unet import SRUNet, UNet

__all__ = [
    "EfficientUNet",
    "EfficientUNetConfig",
    "SRUNet",
    "SUPER_RESOLUTION_UNET_TYPES",
    "UNET_TYPES",
    "UNet",
    "UNetConfig",
    "build_unet",
    "count_parameters",
    "unet_config_class",
]
