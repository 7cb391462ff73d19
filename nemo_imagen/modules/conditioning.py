"""Conditioning shared by the UNets: noise level, text (pooled and per token, with classifier-free
guidance dropout) and, for the super-resolution UNets, the low-resolution image and its
augmentation level."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from nemo_imagen.modules.embeddings import NoiseLevelEmbedding, PooledTextEmbedding


class TextConditionedUNet(nn.Module):
    """Base of every UNet: builds the conditioning of the `model.unet` block `cfg` (a UNetConfig or an
    EfficientUNetConfig) for text token states of width `text_embed_dim`.

    - emb [B, 4 * embed_dim] = MLP(sinusoid(noise_cond)) + MLP(pool(text)), read by every ResBlock;
    - context [B, L, cond_dim] = Linear(text tokens), read by every attention block.

    Classifier-free guidance: a dropped sample's text becomes the null text, one token (learned when
    use_null_token, else zeros) at position 0 with every other position masked out. Its output then
    depends neither on its text_embed / text_mask nor on token_length. A sample whose mask has no real
    token is treated as dropped, so no attention row or pooling is ever empty.
    """

    def __init__(self, cfg, text_embed_dim: int):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        emb_dim = 4 * cfg.embed_dim
        self.time_embed = NoiseLevelEmbedding(cfg.embed_dim, emb_dim, cfg.learned_sinu_pos_emb_dim)
        self.text_pool = PooledTextEmbedding(text_embed_dim, cfg.cond_dim, emb_dim, cfg.feature_pooling_type)
        self.text_to_cond = nn.Linear(text_embed_dim, cfg.cond_dim)
        self.null_text = nn.Parameter(torch.randn(text_embed_dim)) if cfg.use_null_token else None

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
        # logical ops rather than a boolean torch.where, which onnxruntime does not implement
        text_mask = (text_mask & ~drop[:, None]) | (null_mask & drop[:, None])
        return text_embed, text_mask


def upsample_lowres(lowres: torch.Tensor, size) -> torch.Tensor:
    """[B, C, h, w] -> [B, C, *size], bicubic (align_corners False); unchanged when already that size."""
    if tuple(lowres.shape[-2:]) == tuple(size):
        return lowres
    return F.interpolate(lowres, size=tuple(size), mode="bicubic", align_corners=False)


class LowResConditioning(nn.Module):
    """The second input of a super-resolution UNet.

    The low-res image is upsampled to the noisy image's size and concatenated to it along channels
    (the UNet's first conv takes 2 * channels). With noise-conditioning augmentation
    (`noise_cond_aug`), the level the caller corrupted it with goes through a second
    NoiseLevelEmbedding (same convention as noise_cond) that is added to emb.
    """

    def __init__(self, cfg, noise_cond_aug: bool):
        super().__init__()
        self.channels = cfg.channels
        self.noise_cond_aug = bool(noise_cond_aug)
        self.aug_embed = (
            NoiseLevelEmbedding(cfg.embed_dim, 4 * cfg.embed_dim, cfg.learned_sinu_pos_emb_dim)
            if noise_cond_aug
            else None
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor, lowres: torch.Tensor, lowres_noise_cond: torch.Tensor = None):
        """x: [B, C, H, W], emb: [B, 4E], lowres: [B, C, h, w], lowres_noise_cond: [B] or None
        -> (x and upsampled lowres [B, 2C, H, W], emb [B, 4E])."""
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"x: shape {tuple(x.shape)} is not [B, {self.channels}, H, W]")
        if lowres is None or lowres.dim() != 4 or lowres.shape[:2] != x.shape[:2]:
            shape = None if lowres is None else tuple(lowres.shape)
            raise ValueError(
                f"lowres: shape {shape} is not [B, {self.channels}, h, w] with the batch size {x.shape[0]} of x"
            )
        if self.noise_cond_aug:
            if lowres_noise_cond is None:
                raise ValueError(
                    "lowres_noise_cond: required, since this UNet was built with noise_cond_aug=True "
                    "(pass the augmentation level of lowres, shape [B])"
                )
            emb = emb + self.aug_embed(lowres_noise_cond).to(emb.dtype)
        elif lowres_noise_cond is not None:
            raise ValueError(
                "lowres_noise_cond: given, but this UNet was built with noise_cond_aug=False; pass None "
                "(or build it with noise_cond_aug=True)"
            )
        lowres = upsample_lowres(lowres.to(x.dtype), x.shape[-2:])
        return torch.cat([x, lowres], dim=1), emb


def check_spatial_size(x: torch.Tensor, factor: int, what: str) -> None:
    """A fully convolutional UNet takes any H, W that its downsampling divides exactly."""
    if x.dim() != 4 or x.shape[-2] % factor or x.shape[-1] % factor:
        raise ValueError(
            f"x: spatial size {tuple(x.shape[2:])} must be a multiple of {what} = {factor} in H and W"
        )


class SuperResolutionForward:
    """The forward pass of both super-resolution UNets (mixed into SRUNet and EfficientUNet, before their
    UNet base): text conditioning, then the low-res image and its augmentation level (`self.lowres_cond`,
    a LowResConditioning), then the UNet's `trunk`. `downsampling()` -> (factor, description) says which
    H, W the UNet takes."""

    def forward(
        self,
        x: torch.Tensor,
        noise_cond: torch.Tensor,
        text_embed: torch.Tensor,
        text_mask: torch.Tensor,
        lowres: torch.Tensor,
        lowres_noise_cond: torch.Tensor = None,
        drop_text: torch.Tensor = None,
    ) -> torch.Tensor:
        """x: [B, C, H, W] noisy image, noise_cond: [B], text_embed: [B, L, D], text_mask: [B, L] bool,
        lowres: [B, C, h, w] low-res image (bicubically upsampled to H, W here), lowres_noise_cond: [B]
        augmentation level (required iff built with noise_cond_aug), drop_text: [B] bool or None
        -> [B, C, H, W]."""
        check_spatial_size(x, *self.downsampling())
        emb, context, mask = self.condition(noise_cond, text_embed, text_mask, drop_text)
        h, emb = self.lowres_cond(x, emb, lowres, lowres_noise_cond)
        return self.trunk(h, emb, context, mask)
