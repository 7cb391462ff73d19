"""Convolutional building blocks shared by the UNets: ResBlock, resamplers, and the conditioned
sequence that feeds each block the inputs it needs (with optional gradient checkpointing)."""

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from nemo_imagen.modules.config import norm_groups


def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter of `module` (output layers start as the identity residual) and return it."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def upsample_nearest(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, 2H, 2W], nearest neighbour."""
    return F.interpolate(x, scale_factor=2, mode="nearest")


def downsample_avg(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, H/2, W/2], 2x2 average pool."""
    return F.avg_pool2d(x, kernel_size=2, stride=2)


def autocast_off(device_type: str, off: bool = True):
    """A context in which autocast is off on `device_type` (when `off`; else it changes nothing): where blocks
    kept in float32 run inside a bf16 / fp16 autocast region. Devices without autocast (meta) need nothing."""
    if not off or not torch.amp.is_autocast_available(device_type):
        return contextlib.nullcontext()
    return torch.autocast(device_type, enabled=False)


class ResBlock(nn.Module):
    """Guided-diffusion residual block conditioned on an embedding vector.

    h = Conv3x3(SiLU(GroupNorm(x))); e = Linear(SiLU(emb));
    h = GroupNorm(h) * (1 + scale) + shift with (scale, shift) = e  (scale_shift_norm)
        or GroupNorm(h + e);
    out = skip_scale * skip(x) + Conv3x3_zero(Dropout(SiLU(h))), skip a 1x1 conv when the width changes
    or `project_skip` (the Efficient UNet's ResBlock always has one); skip_scale 1/sqrt(2) is the Efficient
    UNet's skip connection scaling.
    With resample 'up' / 'down' both paths are resized (nearest x2 / 2x2 average) before the first conv.

    x: [B, in_channels, H, W], emb: [B, emb_dim] -> [B, out_channels, H', W'].
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_dim: int,
        dropout: float = 0.0,
        scale_shift_norm: bool = True,
        resample: str = None,
        skip_scale: float = 1.0,
        project_skip: bool = False,
    ):
        super().__init__()
        if resample not in (None, "up", "down"):
            raise ValueError(f"resample {resample!r} is not one of None, 'up', 'down'")
        self.resample = {None: None, "up": upsample_nearest, "down": downsample_avg}[resample]
        self.scale_shift_norm = scale_shift_norm
        self.in_norm = nn.GroupNorm(norm_groups(in_channels), in_channels)
        self.in_conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_channels if scale_shift_norm else out_channels)
        self.out_norm = nn.GroupNorm(norm_groups(out_channels), out_channels)
        self.dropout = nn.Dropout(dropout)
        self.out_conv = zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        project = project_skip or in_channels != out_channels
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if project else nn.Identity()
        self.skip_scale = skip_scale

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.in_norm(x))
        if self.resample is not None:
            h, x = self.resample(h), self.resample(x)
        h = self.in_conv(h)
        e = self.emb_proj(F.silu(emb))[:, :, None, None]
        if self.scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_norm(h) * (1 + scale) + shift
        else:
            h = self.out_norm(h + e)
        h = self.out_conv(self.dropout(F.silu(h)))
        return self.skip(x) * self.skip_scale + h


class Downsample(nn.Module):
    """Halve H and W: 3x3 stride-2 conv (with_conv) or 2x2 average pool. [B, C, H, W] -> [B, C, H/2, W/2]."""

    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if with_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) if self.conv is not None else downsample_avg(x)


class Upsample(nn.Module):
    """Double H and W: nearest x2, then a 3x3 conv if with_conv. [B, C, H, W] -> [B, C, 2H, 2W]."""

    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if with_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = upsample_nearest(x)
        return self.conv(x) if self.conv is not None else x


def strided_resampling_geometry(stride: int):
    """(kernel, padding) of a conv that divides H, W exactly by `stride` (and of the transposed conv that
    multiplies them back): kernel stride + 2 * (stride // 2), i.e. the usual 4 / padding 1 for stride 2."""
    padding = stride // 2
    return stride + 2 * padding, padding


class StridedDownsample(nn.Module):
    """Efficient UNet downsampling: a strided conv. [B, C_in, H, W] -> [B, C_out, H/stride, W/stride]."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        kernel, padding = strided_resampling_geometry(stride)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class StridedUpsample(nn.Module):
    """Efficient UNet upsampling: a transposed strided conv. [B, C_in, H, W] -> [B, C_out, H*stride, W*stride]."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        kernel, padding = strided_resampling_geometry(stride)
        self.conv = nn.ConvTranspose2d(in_channels, out_channels, kernel, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


RESAMPLERS = (Downsample, Upsample, StridedDownsample, StridedUpsample)


class ConditionedSequential(nn.ModuleList):
    """Blocks applied in order, each given what it consumes: a ResBlock (x, emb), a resampler (x),
    any other block (an attention block) (x, context, mask).

    With `gradient_checkpointing` True, each ResBlock and attention block runs under
    `torch.utils.checkpoint` (non-reentrant, RNG state preserved so dropout replays identically)
    while training with grad enabled: activations are recomputed in backward instead of stored.
    With `float32` True the blocks run with autocast off, their inputs cast to the parameters' dtype.
    """

    def __init__(self, *blocks: nn.Module, gradient_checkpointing: bool = False, float32: bool = False):
        super().__init__(blocks)
        self.gradient_checkpointing = gradient_checkpointing
        self.float32 = float32

    def forward(
        self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """x: [B, C, H, W], emb: [B, E4], context: [B, L, Dc], mask: [B, L] bool -> [B, C', H', W']."""
        if not self.float32:
            return self._run(x, emb, context, mask)
        dtype = next((p.dtype for p in self.parameters()), x.dtype)
        with autocast_off(x.device.type):
            return self._run(x.to(dtype), emb.to(dtype), context.to(dtype), mask)

    def _run(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        use_checkpoint = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for block in self:
            if isinstance(block, RESAMPLERS):
                x = block(x)
                continue
            args = (x, emb) if isinstance(block, ResBlock) else (x, context, mask)
            x = checkpoint(block, *args, use_reentrant=False) if use_checkpoint else block(*args)
        return x
