"""Build a UNet by `model.unet_type` and count its parameters without allocating weights."""

import torch
import torch.nn as nn

from nemo_imagen.modules.config import EfficientUNetConfig, UNetConfig
from nemo_imagen.modules.efficient_unet import EfficientUNet
from nemo_imagen.modules.unet import SRUNet, UNet

SUPER_RESOLUTION_UNET_TYPES = ("sr-unet", "sr")
UNET_TYPES = ("base",) + SUPER_RESOLUTION_UNET_TYPES


def unet_config_class(unet_type: str) -> type:
    """The `model.unet` dataclass of `unet_type`: UNetConfig (base, sr-unet) or EfficientUNetConfig (sr)."""
    if unet_type in ("base", "sr-unet"):
        return UNetConfig
    if unet_type == "sr":
        return EfficientUNetConfig
    raise ValueError(f"unet_type: {unet_type!r} is not one of {', '.join(UNET_TYPES)}")


def build_unet(unet_type: str, cfg, text_embed_dim: int, noise_cond_aug: bool = False) -> nn.Module:
    """base -> UNet (no low-res input); sr-unet -> SRUNet; sr -> EfficientUNet. `noise_cond_aug` adds
    the low-res augmentation-level embedding of the super-resolution UNets."""
    expected = unet_config_class(unet_type)
    if not isinstance(cfg, expected):
        raise ValueError(f"unet: unet_type {unet_type!r} needs a {expected.__name__}, got {type(cfg).__name__}")
    if unet_type == "base":
        if noise_cond_aug:
            raise ValueError("noise_cond_aug: only the super-resolution UNets (sr-unet, sr) take a low-res input")
        return UNet(cfg, text_embed_dim)
    if unet_type == "sr-unet":
        return SRUNet(cfg, text_embed_dim, noise_cond_aug)
    return EfficientUNet(cfg, text_embed_dim, noise_cond_aug)


def count_parameters(unet_type: str, cfg, text_embed_dim: int, noise_cond_aug: bool = False) -> int:
    """Parameters of `build_unet(...)`, built on the meta device (no weights allocated)."""
    with torch.device("meta"):
        model = build_unet(unet_type, cfg, text_embed_dim, noise_cond_aug)
    return sum(p.numel() for p in model.parameters())
