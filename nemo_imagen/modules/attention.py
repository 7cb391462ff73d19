"""Attention blocks of the UNet: self, cross, stacked and fused (self + text in one softmax).

Every block maps `x: [B, C, H, W]` to `[B, C, H, W]` as `x + proj_out(attention(norm(x)))`, with the
output projection zero-initialised so a fresh block is the identity. Blocks that see text take
`context: [B, L, Dc]` (the projected text tokens) and `mask: [B, L]` bool (True = real token); padding
tokens never influence the output. Each text row needs at least one real token (the UNet guarantees
it), otherwise a cross-attention row has nothing to attend to.

The score computation has three interchangeable paths (`mode`), equal up to float rounding:
- "flash": `torch.nn.functional.scaled_dot_product_attention` with a boolean mask (dispatches to
  the flash / memory-efficient kernels on GPU);
- "stable": explicit matmuls, q and k each pre-scaled by d**-0.25 and scores + softmax in float32
  (float64 for float64 inputs; autocast disabled), safe under bf16 / fp16;
- "plain": the same explicit path in the input dtype.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from nemo_imagen.modules.blocks import zero_module
from nemo_imagen.modules.config import norm_groups

ATTENTION_MODES = ("flash", "stable", "plain")


def attention_mode(flash_attention: bool, stable_attention: bool) -> str:
    """Compute path named by the config flags (flash wins; the config forbids both)."""
    if flash_attention:
        return "flash"
    return "stable" if stable_attention else "plain"


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor = None, mode: str = "stable"
) -> torch.Tensor:
    """Multi-head softmax(q k^T / sqrt(d)) v.

    q: [B, h, N, d], k, v: [B, h, M, d], key_mask: [B, M] bool (True = may be attended) or None
    -> [B, h, N, d].
    """
    if mode == "flash":
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    # Scaling q and k by d**-0.25 each (instead of the scores by d**-0.5) keeps the products small
    # enough not to overflow in half precision.
    scale = q.shape[-1] ** -0.25
    q, k = q * scale, k * scale
    if mode == "stable":
        acc = torch.promote_types(q.dtype, torch.float32)  # float32, or float64 for float64 inputs
        with torch.autocast(device_type=q.device.type, enabled=False):
            weights = _masked_softmax(q.to(acc) @ k.to(acc).transpose(-1, -2), key_mask)
        weights = weights.to(v.dtype)
    elif mode == "plain":
        weights = _masked_softmax(q @ k.transpose(-1, -2), key_mask)
    else:
        raise ValueError(f"attention mode {mode!r} is not one of {', '.join(ATTENTION_MODES)}")
    return weights @ v


def _masked_softmax(scores: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """scores: [B, h, N, M], key_mask: [B, M] bool or None -> softmax over M of the allowed keys."""
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    return torch.softmax(scores, dim=-1)


def _to_tokens(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, H*W, C] (a free view for channels-last input)."""
    return x.flatten(2).transpose(1, 2)


def _from_tokens(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B, H*W, C] -> `like`'s shape [B, C, H, W] and memory format."""
    out = t.transpose(1, 2).reshape(like.shape)
    fmt = torch.channels_last if like.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    return out.contiguous(memory_format=fmt)


class _MultiHead(nn.Module):
    """Shared head bookkeeping: tokens [B, N, C] <-> heads [B, h, N, C // h]."""

    def __init__(self, channels: int, num_heads: int, mode: str):
        super().__init__()
        if num_heads < 1 or channels % num_heads:
            raise ValueError(f"{num_heads} attention heads do not divide {channels} channels")
        if mode not in ATTENTION_MODES:
            raise ValueError(f"attention mode {mode!r} is not one of {', '.join(ATTENTION_MODES)}")
        self.num_heads = num_heads
        self.mode = mode

    def split_heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, c = t.shape
        return t.view(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def merge_heads(self, t: torch.Tensor) -> torch.Tensor:
        b, h, n, d = t.shape
        return t.transpose(1, 2).reshape(b, n, h * d)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor = None):
        """q: [B, N, C], k, v: [B, M, C], key_mask: [B, M] -> [B, N, C]."""
        out = attention(self.split_heads(q), self.split_heads(k), self.split_heads(v), key_mask, self.mode)
        return self.merge_heads(out)


class SelfAttentionBlock(_MultiHead):
    """Image tokens attend to image tokens; `context` and `mask` are accepted and unused."""

    def __init__(self, channels: int, num_heads: int, mode: str = "stable"):
        super().__init__(channels, num_heads, mode)
        self.norm = nn.GroupNorm(norm_groups(channels), channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj_out = zero_module(nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor, context: torch.Tensor = None, mask: torch.Tensor = None) -> torch.Tensor:
        q, k, v = self.qkv(_to_tokens(self.norm(x))).chunk(3, dim=-1)
        return x + _from_tokens(self.proj_out(self.attend(q, k, v)), x)


class CrossAttentionBlock(_MultiHead):
    """Image tokens (queries) attend to the text tokens only (keys and values)."""

    def __init__(self, channels: int, context_dim: int, num_heads: int, mode: str = "stable"):
        super().__init__(channels, num_heads, mode)
        self.norm = nn.GroupNorm(norm_groups(channels), channels)
        self.norm_context = nn.LayerNorm(context_dim)
        self.q = nn.Linear(channels, channels)
        self.kv = nn.Linear(context_dim, 2 * channels)
        self.proj_out = zero_module(nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q = self.q(_to_tokens(self.norm(x)))
        k, v = self.kv(self.norm_context(context)).chunk(2, dim=-1)
        return x + _from_tokens(self.proj_out(self.attend(q, k, v, mask)), x)


class FusedAttentionBlock(_MultiHead):
    """One attention whose keys / values are the image tokens followed by the text tokens (Imagen's
    choice for base64 and SR256): each query's softmax runs over both together."""

    def __init__(self, channels: int, context_dim: int, num_heads: int, mode: str = "stable"):
        super().__init__(channels, num_heads, mode)
        self.norm = nn.GroupNorm(norm_groups(channels), channels)
        self.norm_context = nn.LayerNorm(context_dim)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.kv_context = nn.Linear(context_dim, 2 * channels)
        self.proj_out = zero_module(nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k_img, v_img = self.qkv(_to_tokens(self.norm(x))).chunk(3, dim=-1)
        k_txt, v_txt = self.kv_context(self.norm_context(context)).chunk(2, dim=-1)
        k = torch.cat([k_img, k_txt], dim=1)
        v = torch.cat([v_img, v_txt], dim=1)
        image_keys = mask.new_ones(mask.shape[0], k_img.shape[1])
        key_mask = torch.cat([image_keys, mask], dim=1)
        return x + _from_tokens(self.proj_out(self.attend(q, k, v, key_mask)), x)


class FeedForwardBlock(nn.Module):
    """Pre-norm per-position MLP: x + W2 GELU(W1 GroupNorm(x)), hidden width mult * C."""

    def __init__(self, channels: int, mult: int = 4):
        super().__init__()
        self.norm = nn.GroupNorm(norm_groups(channels), channels)
        self.net = nn.Sequential(
            nn.Linear(channels, mult * channels), nn.GELU(), zero_module(nn.Linear(mult * channels, channels))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + _from_tokens(self.net(_to_tokens(self.norm(x))), x)


class StackedAttentionBlock(nn.Module):
    """Self attention, then cross attention, then a feed-forward, each a pre-norm residual."""

    def __init__(self, channels: int, context_dim: int, num_heads: int, mode: str = "stable"):
        super().__init__()
        self.self_attention = SelfAttentionBlock(channels, num_heads, mode)
        self.cross_attention = CrossAttentionBlock(channels, context_dim, num_heads, mode)
        self.feed_forward = FeedForwardBlock(channels)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.self_attention(x)
        x = self.cross_attention(x, context, mask)
        return self.feed_forward(x)


def make_attention_block(attention_type: str, channels: int, context_dim: int, num_heads: int, mode: str) -> nn.Module:
    """The block for `attention_type` in (self, cross, stacked, fused); all take (x, context, mask)."""
    if attention_type == "self":
        return SelfAttentionBlock(channels, num_heads, mode)
    blocks = {"cross": CrossAttentionBlock, "stacked": StackedAttentionBlock, "fused": FusedAttentionBlock}
    if attention_type not in blocks:
        raise ValueError(f"attention_type {attention_type!r} is not one of self, cross, stacked, fused")
    return blocks[attention_type](channels, context_dim, num_heads, mode)
