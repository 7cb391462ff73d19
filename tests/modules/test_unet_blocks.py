import pytest
import torch
import torch.nn.functional as F

from nemo_imagen.modules.blocks import (
    ConditionedSequential,
    Downsample,
    ResBlock,
    StridedDownsample,
    StridedUpsample,
    Upsample,
)


def expected_groups(channels):
    """32 groups, but at least 4 channels in each (32 groups of 1 channel would be InstanceNorm)."""
    return min(32, channels // 4)


def test_every_norm_keeps_at_least_four_channels_a_group():
    from nemo_imagen.modules import UNet, UNetConfig

    unet = UNet(UNetConfig(embed_dim=32, channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[32],
                           per_head_channels=16, cond_dim=32), text_embed_dim=16)
    norms = [m for m in unet.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert {(m.num_channels, m.num_groups) for m in norms} >= {(32, 8), (64, 16), (96, 24)}
    assert all(m.num_channels // m.num_groups >= 4 and m.num_groups <= 32 for m in norms)


def ref_resblock(block, x, emb):
    """The block's formula written out with functional ops, in float64."""
    p = {name: t.detach().double() for name, t in block.named_parameters()}
    x, emb = x.double(), emb.double()
    h = F.silu(F.group_norm(x, expected_groups(x.shape[1]), p["in_norm.weight"], p["in_norm.bias"]))
    if block.resample is not None:
        h, x = block.resample(h), block.resample(x)
    h = F.conv2d(h, p["in_conv.weight"], p["in_conv.bias"], padding=1)
    e = F.linear(F.silu(emb), p["emb_proj.weight"], p["emb_proj.bias"])[:, :, None, None]
    if block.scale_shift_norm:
        scale, shift = e.chunk(2, dim=1)
        h = F.group_norm(h, expected_groups(h.shape[1]), p["out_norm.weight"], p["out_norm.bias"]) * (1 + scale) + shift
    else:
        h = F.group_norm(h + e, expected_groups(h.shape[1]), p["out_norm.weight"], p["out_norm.bias"])
    h = F.conv2d(F.silu(h), p["out_conv.weight"], p["out_conv.bias"], padding=1)
    skip = F.conv2d(x, p["skip.weight"], p["skip.bias"]) if "skip.weight" in p else x
    return skip * block.skip_scale + h


@pytest.mark.parametrize(
    "in_ch, out_ch, scale_shift_norm, resample, out_hw",
    [
        (32, 64, True, None, 4),
        (64, 64, False, None, 4),
        (64, 64, True, "up", 8),
        (32, 32, True, "down", 2),
    ],
)
def test_resblock_matches_formula(in_ch, out_ch, scale_shift_norm, resample, out_hw, perturb):
    torch.manual_seed(0)
    block = perturb(ResBlock(in_ch, out_ch, 16, scale_shift_norm=scale_shift_norm, resample=resample))
    x, emb = torch.randn(2, in_ch, 4, 4), torch.randn(2, 16)
    out = block(x, emb)
    assert out.shape == (2, out_ch, out_hw, out_hw)
    torch.testing.assert_close(out.double(), ref_resblock(block, x, emb), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("project_skip", [False, True])
def test_efficient_resblock_scales_its_skip_path(project_skip, perturb):
    """skip_scale multiplies the skip path only: out(s) - out(1) = (s - 1) skip(x), numerically."""
    torch.manual_seed(0)
    block = perturb(ResBlock(32, 32, 16, skip_scale=2**-0.5, project_skip=project_skip))
    assert isinstance(block.skip, torch.nn.Conv2d) == project_skip
    x, emb = torch.randn(2, 32, 4, 4), torch.randn(2, 16)
    scaled = block(x, emb)
    torch.testing.assert_close(scaled.double(), ref_resblock(block, x, emb), atol=1e-5, rtol=1e-5)
    block.skip_scale = 1.0
    unscaled = block(x, emb)
    torch.testing.assert_close(unscaled - scaled, (1 - 2**-0.5) * block.skip(x), atol=1e-5, rtol=1e-5)


def test_fresh_resblock_is_its_skip_path():
    torch.manual_seed(0)
    x, emb = torch.randn(2, 32, 4, 4), torch.randn(2, 16)
    assert torch.equal(ResBlock(32, 32, 16)(x, emb), x)


def test_resblock_dropout_acts_in_training_only():
    torch.manual_seed(0)
    block = ResBlock(32, 32, 16, dropout=0.5)
    torch.nn.init.normal_(block.out_conv.weight)
    x, emb = torch.randn(2, 32, 4, 4), torch.randn(2, 16)
    block.eval()
    assert torch.equal(block(x, emb), block(x, emb))
    block.train()
    assert not torch.allclose(block(x, emb), block(x, emb))


def test_plain_resamplers():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    down = Downsample(1, with_conv=False)(x)
    torch.testing.assert_close(down, torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))
    up = Upsample(1, with_conv=False)(down)
    torch.testing.assert_close(up, down.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))


def test_conv_resamplers():
    torch.manual_seed(0)
    x = torch.randn(1, 32, 4, 4)
    down = Downsample(32, with_conv=True)
    torch.testing.assert_close(down(x), F.conv2d(x, down.conv.weight, down.conv.bias, stride=2, padding=1))
    up = Upsample(32, with_conv=True)
    nearest = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    torch.testing.assert_close(up(x), F.conv2d(nearest, up.conv.weight, up.conv.bias, padding=1))


def test_conditioned_sequential_routes_inputs():
    calls = []

    class Recorder(torch.nn.Module):
        def forward(self, x, context, mask):
            calls.append((context, mask))
            return x + context.sum() + mask.sum()

    torch.manual_seed(0)
    res = ResBlock(32, 32, 16)
    torch.nn.init.normal_(res.out_conv.weight)
    seq = ConditionedSequential(res, Recorder(), Downsample(32, with_conv=False))
    x, emb = torch.randn(1, 32, 4, 4), torch.randn(1, 16)
    context, mask = torch.ones(1, 3, 8), torch.tensor([[True, True, False]])
    out = seq(x, emb, context, mask)
    expected = F.avg_pool2d(res(x, emb) + 24.0 + 2.0, 2)
    torch.testing.assert_close(out, expected)
    assert calls[0][0] is context and calls[0][1] is mask


# stride 2 gives the usual 4x4 kernel with padding 1
@pytest.mark.parametrize("stride, size, kernel", [(2, 8, 4), (3, 9, 5), (4, 8, 8)])
def test_strided_resamplers_divide_and_multiply_exactly(stride, size, kernel):
    torch.manual_seed(0)
    x = torch.randn(2, 8, size, size + stride)
    down = StridedDownsample(8, 16, stride)
    h = down(x)
    assert h.shape == (2, 16, size // stride, size // stride + 1)
    assert down.conv.kernel_size == (kernel, kernel)
    torch.testing.assert_close(
        h, F.conv2d(x, down.conv.weight, down.conv.bias, stride=stride, padding=stride // 2)
    )
    up = StridedUpsample(16, 8, stride)
    assert up(h).shape == x.shape
    torch.testing.assert_close(
        up(h), F.conv_transpose2d(h, up.conv.weight, up.conv.bias, stride=stride, padding=stride // 2)
    )
