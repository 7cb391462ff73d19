"""The regular UNet (`unet_type: base`) and its super-resolution form (`unet_type: sr-unet`):
guided-diffusion layout with Imagen text conditioning.

Layout, with E = embed_dim and C_i = E * channel_mult[i]:
- conditioning: emb [B, 4E] = MLP(sinusoid(noise_cond)) + MLP(pool(text)); context [B, L, cond_dim] =
  Linear(text tokens), read by every attention block;
- init conv (channels -> C_0);
- input side, per level: num_res_blocks[i] ResBlocks (-> C_i), each followed by an attention block
  when the level's resolution is in attention_resolutions; a downsample between levels;
- middle: ResBlock, attention block, ResBlock;
- output side, levels reversed: num_res_blocks[i] + 1 ResBlocks, each reading the concatenated skip
  of the matching input-side block, attention as above, an upsample closing every level but the last;
- out: GroupNorm, SiLU, zero-initialised 3x3 conv -> channels.

Conditioning and classifier-free guidance: see `TextConditionedUNet` (conditioning.py).

`SRUNet` reuses the trunk: its `init_conv` also takes the upsampled low-res image as input channels,
and with noise-conditioning augmentation a second `NoiseLevelEmbedding` (augmentation level) is added
to the `emb` returned by `condition` before `trunk` runs (`LowResConditioning`).
"""

import torch
import torch.nn as nn

from nemo_imagen.modules.attention import attention_mode, make_attention_block
from nemo_imagen.modules.blocks import ConditionedSequential, Downsample, ResBlock, Upsample, autocast_off, zero_module
from nemo_imagen.modules.conditioning import LowResConditioning, SuperResolutionForward, TextConditionedUNet
from nemo_imagen.modules.config import UNetConfig, norm_groups


class UNet(TextConditionedUNet):
    """Regular Imagen UNet.

    cfg: the `model.unet` block; text_embed_dim: width D of the text encoder's token states
    (`conditioning.embed_dim`); in_channels: input channels of `init_conv` (default cfg.channels).
    """

    def __init__(self, cfg: UNetConfig, text_embed_dim: int, in_channels: int = None):
        super().__init__(cfg, text_embed_dim)
        emb_dim = 4 * cfg.embed_dim
        mode = attention_mode(cfg.flash_attention, cfg.stable_attention)

        def res(in_ch, out_ch, resample=None):
            return ResBlock(in_ch, out_ch, emb_dim, cfg.dropout, cfg.scale_shift_norm, resample)

        def attn(ch):
            return make_attention_block(cfg.attention_type, ch, cfg.cond_dim, cfg.num_heads(ch), mode)

        def seq(*blocks, level):
            return ConditionedSequential(
                *blocks, gradient_checkpointing=cfg.gradient_checkpointing, float32=cfg.runs_in_float32(level)
            )

        blocks_per_level = cfg.res_blocks_per_level()
        last_level = cfg.num_levels - 1
        ch = cfg.level_channels(0)
        k = cfg.init_conv_kernel_size
        self.init_conv = nn.Conv2d(in_channels or cfg.channels, ch, k, padding=k // 2)

        skip_channels = [ch]
        self.input_blocks = nn.ModuleList()
        for level, num_blocks in enumerate(blocks_per_level):
            for _ in range(num_blocks):
                layers = [res(ch, cfg.level_channels(level))]
                ch = cfg.level_channels(level)
                if cfg.has_attention(level):
                    layers.append(attn(ch))
                self.input_blocks.append(seq(*layers, level=level))
                skip_channels.append(ch)
            if level < last_level:
                down = res(ch, ch, "down") if cfg.resblock_updown else Downsample(ch, cfg.resample_with_conv)
                self.input_blocks.append(seq(down, level=level))
                skip_channels.append(ch)

        self.middle_block = seq(res(ch, ch), attn(ch), res(ch, ch), level=last_level)

        self.output_blocks = nn.ModuleList()
        for level in reversed(range(cfg.num_levels)):
            for i in range(blocks_per_level[level] + 1):
                layers = [res(ch + skip_channels.pop(), cfg.level_channels(level))]
                ch = cfg.level_channels(level)
                if cfg.has_attention(level):
                    layers.append(attn(ch))
                if level > 0 and i == blocks_per_level[level]:
                    layers.append(res(ch, ch, "up") if cfg.resblock_updown else Upsample(ch, cfg.resample_with_conv))
                self.output_blocks.append(seq(*layers, level=level))

        self.float32_image_level = cfg.runs_in_float32(0)  # the input conv and the output head go with level 0
        self.out = nn.Sequential(
            nn.GroupNorm(norm_groups(ch), ch), nn.SiLU(), zero_module(nn.Conv2d(ch, cfg.channels, 3, padding=1))
        )

    def forward(
        self,
        x: torch.Tensor,
        noise_cond: torch.Tensor,
        text_embed: torch.Tensor,
        text_mask: torch.Tensor,
        drop_text: torch.Tensor = None,
    ) -> torch.Tensor:
        """x: [B, C, H, W], noise_cond: [B] float, text_embed: [B, L, D], text_mask: [B, L] bool,
        drop_text: [B] bool or None (True = unconditional sample) -> [B, C, H, W]."""
        emb, context, mask = self.condition(noise_cond, text_embed, text_mask, drop_text)
        return self.trunk(x, emb, context, mask)

    def trunk(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The convolutional UNet. x: [B, C_in, H, W], emb: [B, 4E], context: [B, L, cond_dim],
        mask: [B, L] bool -> [B, channels, H, W]."""
        with autocast_off(x.device.type, self.float32_image_level):
            h = self.init_conv(x.to(self.init_conv.weight.dtype))
        skips = [h]
        for block in self.input_blocks:
            h = block(h, emb, context, mask)
            skips.append(h)
        h = self.middle_block(h, emb, context, mask)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context, mask)
        if not self.float32_image_level:
            return self.out(h)
        with autocast_off(h.device.type):
            return self.out(h.to(self.init_conv.weight.dtype))


class SRUNet(SuperResolutionForward, UNet):
    """The regular UNet as a super-resolution model (`unet_type: sr-unet`): `init_conv` takes the noisy
    image and the low-res image upsampled to its size (2 * channels); with `noise_cond_aug` the low-res
    augmentation level is embedded and added to emb. Fully convolutional: any H, W divisible by
    2 ** (levels - 1) works (e.g. sr1024 trained on 256 crops, sampled at 1024).
    """

    def __init__(self, cfg: UNetConfig, text_embed_dim: int, noise_cond_aug: bool = False):
        super().__init__(cfg, text_embed_dim, in_channels=2 * cfg.channels)
        self.lowres_cond = LowResConditioning(cfg, noise_cond_aug)

    def downsampling(self):
        return 2 ** (self.cfg.num_levels - 1), "2**(levels-1)"
