"""UNets and their building blocks (pure torch.nn)."""

from nemo_imagen.modules.config import UNetConfig
from nemo_imagen.modules.unet import UNet, count_parameters

__all__ = ["UNet", "UNetConfig", "count_parameters"]
