"""Noise-level (time) embeddings and pooled text embeddings of the UNet."""

import math

import torch
import torch.nn as nn


def sinusoidal_embedding(x: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Fixed sinusoidal embedding of a scalar per sample (guided-diffusion's timestep embedding).

    x: [B] float -> [B, dim] float32: `cos(x f_j)` for j < dim // 2, then `sin(x f_j)`, with
    `f_j = max_period ** (-j / (dim // 2))`; a zero column is appended when dim is odd.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=x.device, dtype=torch.float32) / half)
    args = x.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class SinusoidalEmbedding(nn.Module):
    """Module form of `sinusoidal_embedding`: x [B] -> [B, dim]."""

    def __init__(self, dim: int, max_period: float = 10000.0):
        super().__init__()
        self.dim = dim
        self.max_period = max_period
        self.out_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sinusoidal_embedding(x, self.dim, self.max_period)


class LearnedSinusoidalEmbedding(nn.Module):
    """Random Fourier features with learned frequencies, concatenated with the raw value.

    x: [B] -> [B, dim + 1] = [x, sin(2 pi x w), cos(2 pi x w)] with w: [dim // 2] learned.
    """

    def __init__(self, dim: int):
        super().__init__()
        if dim % 2:
            raise ValueError(f"learned sinusoidal embedding dim must be even, got {dim}")
        self.weights = nn.Parameter(torch.randn(dim // 2))
        self.out_dim = dim + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()[:, None]
        freqs = 2 * math.pi * x * self.weights.float()[None]
        return torch.cat([x, torch.sin(freqs), torch.cos(freqs)], dim=-1)


class NoiseLevelEmbedding(nn.Module):
    """Scalar noise level -> conditioning vector: sinusoid (fixed or learned), Linear, SiLU, Linear.

    Used for the diffusion noise level; a super-resolution UNet adds a second one for the
    augmentation level of its low-res input. noise_cond: [B] -> [B, out_dim].
    """

    def __init__(self, embed_dim: int, out_dim: int, learned_dim: int = 0):
        super().__init__()
        self.sinusoid = LearnedSinusoidalEmbedding(learned_dim) if learned_dim > 0 else SinusoidalEmbedding(embed_dim)
        self.mlp = nn.Sequential(
            nn.Linear(self.sinusoid.out_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim)
        )

    def forward(self, noise_cond: torch.Tensor) -> torch.Tensor:
        emb = self.sinusoid(noise_cond)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the real tokens. x: [B, L, D], mask: [B, L] bool -> [B, D] (zeros if none is real)."""
    weights = mask.to(x.dtype)
    return (x * weights[..., None]).sum(1) / weights.sum(1, keepdim=True).clamp(min=1.0)


class AttentionPooling(nn.Module):
    """Weighted sum of tokens with weights softmax(w . x_l + b) over the real tokens only.

    x: [B, L, D], mask: [B, L] bool -> [B, D]; a row without real tokens pools to zeros.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.score = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = self.score(x).squeeze(-1).float()
        # finfo.min rather than -inf: an all-padding row then softmaxes to uniform (no NaN) and the
        # final mask product zeroes it; in any other row exp(min - max) underflows to exactly 0.
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1) * mask
        return torch.einsum("bl,bld->bd", weights.to(x.dtype), x)


class PooledTextEmbedding(nn.Module):
    """Pooled text vector added to the time embedding.

    pool (attention or mean over real tokens), LayerNorm, Linear(text_dim -> cond_dim), then
    LayerNorm, Linear(cond_dim -> out_dim), SiLU, Linear(out_dim -> out_dim).
    text_embed: [B, L, text_dim], text_mask: [B, L] bool -> [B, out_dim].
    """

    def __init__(self, text_dim: int, cond_dim: int, out_dim: int, pooling_type: str):
        super().__init__()
        if pooling_type not in ("attention", "mean"):
            raise ValueError(f"pooling_type {pooling_type!r} is not one of attention, mean")
        self.pool = AttentionPooling(text_dim) if pooling_type == "attention" else None
        self.to_cond = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, cond_dim))
        self.mlp = nn.Sequential(
            nn.LayerNorm(cond_dim), nn.Linear(cond_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim)
        )

    def forward(self, text_embed: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(text_embed, text_mask) if self.pool is not None else masked_mean(text_embed, text_mask)
        return self.mlp(self.to_cond(pooled))
