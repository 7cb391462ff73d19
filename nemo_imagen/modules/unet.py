"""The regular UNet (`unet_type: base`): guided-diffusion layout with Imagen text conditioning.

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

Classifier-free guidance: a dropped sample's text becomes the null text, one token (learned when
use_null_token, else zeros) at position 0 with every other position masked out. Its output then
depends neither on its text_embed / text_mask nor on token_length. A sample whose mask has no real
token is treated as dropped, so no attention row or pooling is ever empty.

Super-resolution reuses this class: an SR subclass widens `init_conv` to take the upsampled low-res
image as extra input channels and adds a second `NoiseLevelEmbedding` (augmentation level) to the
`emb` returned by `condition` before calling `trunk`.
"""

import torch
import torch.nn as nn

from nemo_imagen.modules.attention import attention_mode, make_attention_block
from nemo_imagen.modules.blocks import ConditionedSequential, Downsample, ResBlock, Upsample, zero_module
from nemo_imagen.modules.config import UNetConfig, norm_groups
from nemo_imagen.modules.embeddings import NoiseLevelEmbedding, PooledTextEmbedding


class UNet(nn.Module):
    """Regular Imagen UNet.

    cfg: the `model.unet` block; text_embed_dim: width D of the text encoder's token states
    (`conditioning.embed_dim`).
    """

    def __init__(self, cfg: UNetConfig, text_embed_dim: int):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        emb_dim = 4 * cfg.embed_dim
        self.time_embed = NoiseLevelEmbedding(cfg.embed_dim, emb_dim, cfg.learned_sinu_pos_emb_dim)
        self.text_pool = PooledTextEmbedding(text_embed_dim, cfg.cond_dim, emb_dim, cfg.feature_pooling_type)
        self.text_to_cond = nn.Linear(text_embed_dim, cfg.cond_dim)
        self.null_text = nn.Parameter(torch.randn(text_embed_dim)) if cfg.use_null_token else None

        mode = attention_mode(cfg.flash_attention, cfg.stable_attention)

        def res(in_ch, out_ch, resample=None):
            return ResBlock(in_ch, out_ch, emb_dim, cfg.dropout, cfg.scale_shift_norm, resample)

        def attn(ch):
            return make_attention_block(cfg.attention_type, ch, cfg.cond_dim, cfg.num_heads(ch), mode)

        def seq(*blocks):
            return ConditionedSequential(*blocks, gradient_checkpointing=cfg.gradient_checkpointing)

        blocks_per_level = cfg.res_blocks_per_level()
        last_level = cfg.num_levels - 1
        ch = cfg.level_channels(0)
        k = cfg.init_conv_kernel_size
        self.init_conv = nn.Conv2d(cfg.channels, ch, k, padding=k // 2)

        skip_channels = [ch]
        self.input_blocks = nn.ModuleList()
        for level, num_blocks in enumerate(blocks_per_level):
            for _ in range(num_blocks):
                layers = [res(ch, cfg.level_channels(level))]
                ch = cfg.level_channels(level)
                if cfg.has_attention(level):
                    layers.append(attn(ch))
                self.input_blocks.append(seq(*layers))
                skip_channels.append(ch)
            if level < last_level:
                down = res(ch, ch, "down") if cfg.resblock_updown else Downsample(ch, cfg.resample_with_conv)
                self.input_blocks.append(seq(down))
                skip_channels.append(ch)

        self.middle_block = seq(res(ch, ch), attn(ch), res(ch, ch))

        self.output_blocks = nn.ModuleList()
        for level in reversed(range(cfg.num_levels)):
            for i in range(blocks_per_level[level] + 1):
                layers = [res(ch + skip_channels.pop(), cfg.level_channels(level))]
                ch = cfg.level_channels(level)
                if cfg.has_attention(level):
                    layers.append(attn(ch))
                if level > 0 and i == blocks_per_level[level]:
                    layers.append(res(ch, ch, "up") if cfg.resblock_updown else Upsample(ch, cfg.resample_with_conv))
                self.output_blocks.append(seq(*layers))

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

    def condition(
        self,
        noise_cond: torch.Tensor,
        text_embed: torch.Tensor,
        text_mask: torch.Tensor,
        drop_text: torch.Tensor = None,
    ):
        """-> emb [B, 4E] (noise level + pooled text), context [B, L, cond_dim], mask [B, L] bool."""
        text_embed = text_embed.to(self.text_to_cond.weight.dtype)
        text_embed, text_mask = self.apply_text_dropout(text_embed, text_mask, drop_text)
        emb = self.time_embed(noise_cond) + self.text_pool(text_embed, text_mask)
        return emb, self.text_to_cond(text_embed), text_mask

    def apply_text_dropout(self, text_embed: torch.Tensor, text_mask: torch.Tensor, drop_text: torch.Tensor = None):
        """Replace the text of dropped samples, and of samples without a real token, by the null text.

        text_embed: [B, L, D], text_mask: [B, L], drop_text: [B] bool or None -> (text_embed, text_mask)
        with dropped rows = (null token, 0, ..., 0) and mask (True, False, ..., False).
        """
        text_mask = text_mask.bool()
        drop = ~text_mask.any(dim=1)
        if drop_text is not None:
            drop = drop | drop_text.bool()
        length, dim = text_embed.shape[1:]
        null_token = self.null_text.to(text_embed.dtype) if self.null_text is not None else text_embed.new_zeros(dim)
        null_embed = torch.cat([null_token[None], text_embed.new_zeros(length - 1, dim)])
        null_mask = torch.arange(length, device=text_mask.device) == 0
        # torch.where, not arithmetic blending: a dropped row carries nothing of its input, not even NaN.
        text_embed = torch.where(drop[:, None, None], null_embed, text_embed)
        text_mask = torch.where(drop[:, None], null_mask, text_mask)
        return text_embed, text_mask

    def trunk(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The convolutional UNet. x: [B, C_in, H, W], emb: [B, 4E], context: [B, L, cond_dim],
        mask: [B, L] bool -> [B, channels, H, W]."""
        h = self.init_conv(x.to(self.init_conv.weight.dtype))
        skips = [h]
        for block in self.input_blocks:
            h = block(h, emb, context, mask)
            skips.append(h)
        h = self.middle_block(h, emb, context, mask)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context, mask)
        return self.out(h)


def count_parameters(cfg: UNetConfig, text_embed_dim: int) -> int:
    """Parameters of `UNet(cfg, text_embed_dim)`, built on the meta device (no weights allocated)."""
    with torch.device("meta"):
        model = UNet(cfg, text_embed_dim)
    return sum(p.numel() for p in model.parameters())
