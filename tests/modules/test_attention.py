"""Attention blocks against a plain float64 reference (einsum + masked softmax), for every type and
every compute path."""

import math

import pytest
import torch
import torch.nn.functional as F

from nemo_imagen.modules.attention import (
    CrossAttentionBlock,
    FusedAttentionBlock,
    SelfAttentionBlock,
    StackedAttentionBlock,
    attention,
    make_attention_block,
)

CHANNELS, CONTEXT_DIM, HEADS = 64, 48, 2
TYPES = ["self", "cross", "stacked", "fused"]
MODES = ["flash", "stable", "plain"]


def _p(t):
    return t.detach().double()


def ref_group_norm(x, norm):
    b = x.shape[0]
    g = x.reshape(b, norm.num_groups, -1)
    g = (g - g.mean(-1, keepdim=True)) / torch.sqrt(g.var(-1, unbiased=False, keepdim=True) + norm.eps)
    return g.reshape(x.shape) * _p(norm.weight)[None, :, None, None] + _p(norm.bias)[None, :, None, None]


def ref_layer_norm(t, norm):
    t = (t - t.mean(-1, keepdim=True)) / torch.sqrt(t.var(-1, unbiased=False, keepdim=True) + norm.eps)
    return t * _p(norm.weight) + _p(norm.bias)


def ref_linear(t, layer):
    return t @ _p(layer.weight).T + _p(layer.bias)


def tokens(x):
    b, c, h, w = x.shape
    return torch.einsum("bchw->bhwc", x).reshape(b, h * w, c)


def untokens(t, shape):
    b, c, h, w = shape
    return torch.einsum("bhwc->bchw", t.reshape(b, h, w, c))


def ref_mha(q, k, v, key_mask, heads):
    b, n, c = q.shape
    d = c // heads
    qh, kh, vh = (t.reshape(b, t.shape[1], heads, d) for t in (q, k, v))
    scores = torch.einsum("bnhd,bmhd->bhnm", qh, kh) / math.sqrt(d)
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return torch.einsum("bhnm,bmhd->bnhd", weights, vh).reshape(b, n, c)


def ref_self(block, x):
    q, k, v = ref_linear(tokens(ref_group_norm(x, block.norm)), block.qkv).chunk(3, dim=-1)
    return x + untokens(ref_linear(ref_mha(q, k, v, None, block.num_heads), block.proj_out), x.shape)


def ref_cross(block, x, ctx, mask):
    q = ref_linear(tokens(ref_group_norm(x, block.norm)), block.q)
    k, v = ref_linear(ref_layer_norm(ctx, block.norm_context), block.kv).chunk(2, dim=-1)
    return x + untokens(ref_linear(ref_mha(q, k, v, mask, block.num_heads), block.proj_out), x.shape)


def ref_fused(block, x, ctx, mask):
    q, k_img, v_img = ref_linear(tokens(ref_group_norm(x, block.norm)), block.qkv).chunk(3, dim=-1)
    k_txt, v_txt = ref_linear(ref_layer_norm(ctx, block.norm_context), block.kv_context).chunk(2, dim=-1)
    k, v = torch.cat([k_img, k_txt], 1), torch.cat([v_img, v_txt], 1)
    key_mask = torch.cat([torch.ones(x.shape[0], k_img.shape[1], dtype=torch.bool), mask], 1)
    return x + untokens(ref_linear(ref_mha(q, k, v, key_mask, block.num_heads), block.proj_out), x.shape)


def ref_stacked(block, x, ctx, mask):
    x = ref_self(block.self_attention, x)
    x = ref_cross(block.cross_attention, x, ctx, mask)
    ff = block.feed_forward
    hidden = F.gelu(ref_linear(tokens(ref_group_norm(x, ff.norm)), ff.net[0]))
    return x + untokens(ref_linear(hidden, ff.net[2]), x.shape)


def reference(block, x, ctx, mask):
    x, ctx = x.double(), ctx.double()
    if isinstance(block, SelfAttentionBlock):
        return ref_self(block, x)
    if isinstance(block, CrossAttentionBlock):
        return ref_cross(block, x, ctx, mask)
    if isinstance(block, FusedAttentionBlock):
        return ref_fused(block, x, ctx, mask)
    assert isinstance(block, StackedAttentionBlock)
    return ref_stacked(block, x, ctx, mask)


def inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, CHANNELS, 3, 5, generator=gen)  # H != W catches transposed token layouts
    ctx = torch.randn(2, 6, CONTEXT_DIM, generator=gen)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    return x, ctx, mask


def block_for(attention_type, mode, perturb):
    torch.manual_seed(0)
    return perturb(make_attention_block(attention_type, CHANNELS, CONTEXT_DIM, HEADS, mode), std=0.2)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("attention_type", TYPES)
def test_block_matches_float64_reference(attention_type, mode, perturb):
    block = block_for(attention_type, mode, perturb)
    x, ctx, mask = inputs()
    out = block(x, ctx, mask)
    expected = reference(block, x, ctx, mask)
    # the residual alone would be far off: the attention branch is non-trivial
    assert (expected - x.double()).abs().max() > 0.1
    torch.testing.assert_close(out.double(), expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("attention_type", ["cross", "stacked", "fused"])
def test_padding_tokens_have_no_effect(attention_type, mode, perturb):
    block = block_for(attention_type, mode, perturb)
    x, ctx, mask = inputs()
    out = block(x, ctx, mask)
    changed = ctx.clone()
    changed[~mask] = 100.0 * torch.randn(int((~mask).sum()), CONTEXT_DIM)
    torch.testing.assert_close(block(x, changed, mask), out, atol=1e-6, rtol=0)
    changed[0, 0] = torch.randn(CONTEXT_DIM)  # a real token does change the output (a shift would not: LayerNorm)
    assert (block(x, changed, mask)[0] - out[0]).abs().max() > 1e-3


def test_fresh_block_is_identity():
    x, ctx, mask = inputs()
    for attention_type in TYPES:
        block = make_attention_block(attention_type, CHANNELS, CONTEXT_DIM, HEADS, "stable")
        assert torch.equal(block(x, ctx, mask), x)


def test_stable_path_survives_scores_that_overflow_float16():
    # q . k / sqrt(d) = 64 * 300 * 300 / 8 = 720000 > float16 max (65504)
    q = torch.full((1, 1, 2, 64), 300.0, dtype=torch.float16)
    k = torch.full((1, 1, 3, 64), 300.0, dtype=torch.float16)
    v = torch.arange(3 * 64, dtype=torch.float16).reshape(1, 1, 3, 64) / 100
    stable = attention(q, k, v, mode="stable")
    plain = attention(q, k, v, mode="plain")
    assert not torch.isfinite(plain).all()
    torch.testing.assert_close(stable.float(), v.float().mean(2, keepdim=True).expand(1, 1, 2, 64), atol=1e-2, rtol=0)


def test_heads_must_divide_channels():
    with pytest.raises(ValueError, match="heads"):
        make_attention_block("fused", 64, 48, 3, "stable")
