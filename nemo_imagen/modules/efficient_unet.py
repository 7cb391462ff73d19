"""Imagen's Efficient UNet (`unet_type: sr`), the super-resolution trunk of the paper's appendix
(arXiv 2205.11487, Figures A.27-A.30), with the regular UNet's conditioning.

Compared with the regular UNet: parameters move to low resolution (more ResBlocks there, per-level
`num_resblocks`); each ResBlock's skip path is a 1x1 conv, scaled by 1/sqrt(2) with
`skip_connection_scaling`; a level downsamples (strided conv) BEFORE its ResBlocks on the way down and
upsamples (transposed strided conv) AFTER them on the way up; at most one attention block per level
and side, after the ResBlocks; the down path's output of a level is added (not concatenated) to the
input of that level's up path.

Layout, with C_i = embed_dim * channel_mult[i] and C_-1 = C_0:
- init conv (2 * channels: noisy image + upsampled low-res image -> C_0), full resolution;
- down, level i: [StridedDownsample C_{i-1} (all levels but the deepest)], ResBlock C_{i-1} -> C_i,
  num_resblocks[i] - 1 ResBlocks C_i, [attention C_i];
- up, level i (deepest first; input + the down output of level i, except at the deepest level):
  ResBlock C_i -> C_{i-1}, num_resblocks[i] - 1 ResBlocks C_{i-1}, [attention C_{i-1}],
  [StridedUpsample C_{i-1}];
- out: 1x1 conv C_0 -> channels.
"""

import torch
import torch.nn as nn

from nemo_imagen.modules.attention import attention_mode, make_attention_block
from nemo_imagen.modules.blocks import ConditionedSequential, ResBlock, StridedDownsample, StridedUpsample
from nemo_imagen.modules.conditioning import LowResConditioning, SuperResolutionForward, TextConditionedUNet
from nemo_imagen.modules.config import EfficientUNetConfig

SKIP_SCALE = 2**-0.5


class EfficientUNet(SuperResolutionForward, TextConditionedUNet):
    """Efficient UNet super-resolution model.

    cfg: the `model.unet` block; text_embed_dim: width D of the text encoder's token states;
    noise_cond_aug: embed the low-res augmentation level (then `lowres_noise_cond` is required).
    Fully convolutional: any H, W divisible by stride ** (levels - 1) works.
    """

    def __init__(self, cfg: EfficientUNetConfig, text_embed_dim: int, noise_cond_aug: bool = False):
        super().__init__(cfg, text_embed_dim)
        self.lowres_cond = LowResConditioning(cfg, noise_cond_aug)
        emb_dim = 4 * cfg.embed_dim
        mode = attention_mode(cfg.flash_attention, cfg.stable_attention)
        skip_scale = SKIP_SCALE if cfg.skip_connection_scaling else 1.0

        def res(in_ch, out_ch):
            return ResBlock(
                in_ch, out_ch, emb_dim, cfg.dropout, cfg.scale_shift_norm, skip_scale=skip_scale, project_skip=True
            )

        def attn(ch):
            return make_attention_block(cfg.attention_type, ch, cfg.cond_dim, cfg.num_heads(ch), mode)

        def seq(blocks):
            return ConditionedSequential(*blocks, gradient_checkpointing=cfg.gradient_checkpointing)

        k = cfg.init_conv_kernel_size
        self.init_conv = nn.Conv2d(2 * cfg.channels, cfg.level_channels(0), k, padding=k // 2)
        self.down_levels = nn.ModuleList()
        self.up_levels = nn.ModuleList()
        for level, num_blocks in enumerate(cfg.res_blocks_per_level()):
            outer, inner = cfg.level_input_channels(level), cfg.level_channels(level)
            down = [StridedDownsample(outer, outer, cfg.stride)] if cfg.resamples(level) else []
            down += [res(outer, inner)] + [res(inner, inner) for _ in range(num_blocks - 1)]
            up = [res(inner, outer)] + [res(outer, outer) for _ in range(num_blocks - 1)]
            if cfg.has_attention(level):
                down.append(attn(inner))
                up.append(attn(outer))
            if cfg.resamples(level):
                up.append(StridedUpsample(outer, outer, cfg.stride))
            self.down_levels.append(seq(down))
            self.up_levels.append(seq(up))
        self.out = nn.Conv2d(cfg.level_channels(0), cfg.channels, 1)

    def downsampling(self):
        return self.cfg.total_downsampling, "stride**(levels-1)"

    def trunk(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: [B, 2C, H, W], emb: [B, 4E], context: [B, L, cond_dim], mask: [B, L] bool -> [B, C, H, W]."""
        h = self.init_conv(x.to(self.init_conv.weight.dtype))
        skips = []
        for block in self.down_levels:
            h = block(h, emb, context, mask)
            skips.append(h)
        skips.pop()  # the deepest level's output is its up path's input
        deepest = len(self.up_levels) - 1
        for level in reversed(range(len(self.up_levels))):
            if level < deepest:
                h = h + skips.pop()
            h = self.up_levels[level](h, emb, context, mask)
        return self.out(h)
