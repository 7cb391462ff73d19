"""The super-resolution UNets: EfficientUNet (unet_type sr) and SRUNet (sr-unet)."""

import pytest
import torch
import torch.nn.functional as F

from nemo_imagen.modules import EfficientUNet, EfficientUNetConfig, SRUNet, UNetConfig, build_unet, count_parameters
from nemo_imagen.modules.blocks import ResBlock, StridedDownsample, StridedUpsample
from nemo_imagen.modules.embeddings import NoiseLevelEmbedding
from tests.modules.test_unet_blocks import ref_resblock

TEXT_DIM = 24
DOCUMENTED_TEXT_DIM = 1024  # conditioning.embed_dim of the documented configs


def tiny_efficient_config(**overrides) -> EfficientUNetConfig:
    """Three levels (blocks at 8x8, 4x4, 4x4 for a 16x16 input), 32 / 64 / 64 channels."""
    values = dict(
        embed_dim=32,
        image_size=16,
        channel_mult=[1, 2, 2],
        num_resblocks=[1, 2, 2],
        atnn_enabled_at=[0, 1, 1],
        per_head_channels=16,
        cond_dim=32,
        attention_type="fused",
    )
    values.update(overrides)
    return EfficientUNetConfig(**values)


def tiny_sr_unet_config(**overrides) -> UNetConfig:
    values = dict(
        embed_dim=32, image_size=16, channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[8],
        per_head_channels=16, cond_dim=32,
    )
    values.update(overrides)
    return UNetConfig(**values)


def make_model(unet_type, perturb, noise_cond_aug=False, seed=0, **overrides):
    torch.manual_seed(seed)
    cfg = tiny_efficient_config(**overrides) if unet_type == "sr" else tiny_sr_unet_config(**overrides)
    return perturb(build_unet(unet_type, cfg, TEXT_DIM, noise_cond_aug), seed=seed)


def batch(size=3, image_size=16, lowres_size=4, length=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(size, 3, image_size, image_size, generator=gen)
    noise_cond = torch.randn(size, generator=gen)
    text = torch.randn(size, length, TEXT_DIM, generator=gen)
    mask = torch.arange(length)[None] < torch.tensor([2, length, 3, 1])[:size, None]
    lowres = torch.rand(size, 3, lowres_size, lowres_size, generator=gen) * 2 - 1
    aug = torch.rand(size, generator=gen)
    return x, noise_cond, text, mask, lowres, aug


# sr256-400m: the documented regular-UNet block except resblock_updown (see the report);
# sr256-600m: the documented Efficient UNet block with the table's fused attention;
# sr1024-400m: that block with cross + stable attention and 3 (not 8) ResBlocks at the deepest level.
SR256_400M = UNetConfig(
    embed_dim=128, image_size=256, num_res_blocks=[2, 2, 3, 4, 3], channel_mult=[1, 2, 4, 6, 6], num_attn_heads=4,
    per_head_channels=64, cond_dim=512, attention_type="fused", attention_resolutions=[32, 16],
    stable_attention=False, flash_attention=True, resblock_updown=True,
)
SR256_600M = EfficientUNetConfig(attention_type="fused")
SR1024_400M = EfficientUNetConfig(
    image_size=1024, num_resblocks=[2, 4, 8, 8, 3], attention_type="cross", stable_attention=True
)


@pytest.mark.parametrize("noise_cond_aug", [False, True])
@pytest.mark.parametrize(
    "name, unet_type, cfg, documented",
    [
        ("sr256-400m", "sr-unet", SR256_400M, 429e6),
        ("sr256-600m", "sr", SR256_600M, 646e6),
        ("sr1024-400m", "sr", SR1024_400M, 427e6),
    ],
)
def test_documented_sizes_within_3_percent(name, unet_type, cfg, documented, noise_cond_aug):
    count = count_parameters(unet_type, cfg, DOCUMENTED_TEXT_DIM, noise_cond_aug)
    assert abs(count / documented - 1) < 0.03, f"{name}: {count / 1e6:.1f}M vs {documented / 1e6:.0f}M"


@pytest.mark.parametrize("unet_type", ["sr", "sr-unet"])
def test_noise_cond_aug_adds_exactly_one_noise_level_embedding(unet_type, perturb):
    plain, aug = make_model(unet_type, perturb), make_model(unet_type, perturb, noise_cond_aug=True)
    assert plain.lowres_cond.aug_embed is None
    assert isinstance(aug.lowres_cond.aug_embed, NoiseLevelEmbedding)
    e = 4 * 32  # 4 * embed_dim; sinusoid of embed_dim = 32, then Linear(32, e), SiLU, Linear(e, e)
    extra = sum(p.numel() for p in aug.parameters()) - sum(p.numel() for p in plain.parameters())
    assert extra == (32 * e + e) + (e * e + e)
    cfg = aug.cfg
    assert count_parameters(unet_type, cfg, TEXT_DIM, True) == sum(p.numel() for p in aug.parameters())


@pytest.mark.parametrize("unet_type", ["sr", "sr-unet"])
def test_lowres_noise_cond_required_exactly_with_noise_cond_aug(unet_type, perturb):
    x, noise_cond, text, mask, lowres, aug_level = batch()
    with_aug = make_model(unet_type, perturb, noise_cond_aug=True)
    with pytest.raises(ValueError, match=r"^lowres_noise_cond: required"):
        with_aug(x, noise_cond, text, mask, lowres)
    out = with_aug(x, noise_cond, text, mask, lowres, aug_level)
    other = with_aug(x, noise_cond, text, mask, lowres, aug_level + 0.5)
    assert (other - out).abs().amax(dim=(1, 2, 3)).min() > 1e-4  # every sample reads its level
    without = make_model(unet_type, perturb)
    with pytest.raises(ValueError, match=r"^lowres_noise_cond: given, but"):
        without(x, noise_cond, text, mask, lowres, aug_level)


@pytest.mark.parametrize("unet_type", ["sr", "sr-unet"])
@pytest.mark.parametrize("height, width", [(16, 16), (32, 48)])
def test_fully_convolutional_output_shapes(unet_type, height, width, perturb):
    model = make_model(unet_type, perturb)
    x, noise_cond, text, mask, lowres, _ = batch()
    x = torch.randn(3, 3, height, width)
    out = model(x, noise_cond, text, mask, lowres)
    assert out.shape == x.shape and torch.isfinite(out).all()
    bad_height = 18 if unet_type == "sr" else 17  # total downsampling 4 (sr) / 2 (sr-unet)
    with pytest.raises(ValueError, match=rf"^x: spatial size \({bad_height}, 16\) must be a multiple of"):
        model(torch.randn(3, 3, bad_height, 16), noise_cond, text, mask, lowres)
    with pytest.raises(ValueError, match=r"^lowres: shape \(2, 3, 4, 4\)"):
        model(x, noise_cond, text, mask, lowres[:2])


@pytest.mark.parametrize("unet_type", ["sr", "sr-unet"])
@pytest.mark.parametrize("lowres_size", [4, 16])
def test_first_conv_sees_x_and_the_bicubic_upsampled_lowres(unet_type, lowres_size, perturb):
    model = make_model(unet_type, perturb)
    x, noise_cond, text, mask, lowres, _ = batch(lowres_size=lowres_size)
    seen = []
    model.init_conv.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    model(x, noise_cond, text, mask, lowres)
    assert model.init_conv.in_channels == 6 and seen[0].shape == (3, 6, 16, 16)
    assert torch.equal(seen[0][:, :3], x)
    expected = F.interpolate(lowres, size=(16, 16), mode="bicubic", align_corners=False)
    torch.testing.assert_close(seen[0][:, 3:], expected, atol=0, rtol=0)
    if lowres_size == 16:
        assert torch.equal(seen[0][:, 3:], lowres)  # same size: passed through untouched


@pytest.mark.parametrize("unet_type", ["sr", "sr-unet"])
def test_output_depends_on_lowres_and_gradient_reaches_it(unet_type, perturb):
    model = make_model(unet_type, perturb)
    x, noise_cond, text, mask, lowres, _ = batch()
    lowres = lowres.clone().requires_grad_(True)
    out = model(x, noise_cond, text, mask, lowres)
    out.square().sum().backward()
    assert lowres.grad.abs().amax(dim=(1, 2, 3)).min() > 1e-6  # every sample's lowres gets a gradient
    other = model(x, noise_cond, text, mask, lowres.detach().flip(-1))
    assert (other - out).abs().amax(dim=(1, 2, 3)).min() > 1e-4


@pytest.mark.parametrize("unet_type", ["sr", "sr-unet"])
@pytest.mark.parametrize("use_null_token", [False, True])
def test_dropped_sample_ignores_its_text(unet_type, use_null_token, perturb):
    model = make_model(unet_type, perturb, use_null_token=use_null_token, attention_type="cross")
    x, noise_cond, text, mask, lowres, _ = batch()
    drop = torch.tensor([True, False, False])
    out = model(x, noise_cond, text, mask, lowres, drop_text=drop)
    other_text, other_mask = text.clone(), mask.clone()
    other_text[0] = 10 * torch.randn(5, TEXT_DIM)
    other_text[0, 0, 0] = float("nan")
    other_mask[0] = torch.tensor([False, True, False, True, True])
    other_text[1] = torch.randn(5, TEXT_DIM)
    out2 = model(x, noise_cond, other_text, other_mask, lowres, drop_text=drop)
    assert torch.equal(out2[0], out[0])  # dropped: bit-identical
    assert (out2[1] - out[1]).abs().max() > 1e-4  # kept: the new text matters
    torch.testing.assert_close(out2[2], out[2], atol=1e-6, rtol=0)


@pytest.mark.parametrize("scaling", [True, False])
def test_every_efficient_resblock_computes_scaled_skip_plus_residual(scaling, perturb):
    """Inside the full model each ResBlock's output equals skip(x) / sqrt(2) + residual (float64 reference)."""
    model = make_model("sr", perturb, skip_connection_scaling=scaling)
    blocks = [m for m in model.modules() if isinstance(m, ResBlock)]
    assert len(blocks) == 2 * (1 + 2 + 2)
    assert all(isinstance(b.skip, torch.nn.Conv2d) for b in blocks)  # the 1x1 skip conv of Imagen's ResNetBlock
    records = []
    for block in blocks:
        block.register_forward_hook(lambda module, args, out: records.append((module, *args, out)))
    model(*batch()[:5])
    assert len(records) == len(blocks)
    for block, x, emb, out in records:
        assert block.skip_scale == (2**-0.5 if scaling else 1.0)
        torch.testing.assert_close(out.double(), ref_resblock(block, x, emb), atol=1e-5, rtol=1e-5)


def test_down_levels_resample_before_their_blocks_and_up_levels_after(perturb):
    model = make_model("sr", perturb)
    sizes = {}

    def record(key, what):
        return lambda module, args, out: sizes.setdefault(key, []).append(what(args[0], out))

    for side in ("down", "up"):
        for level, seq in enumerate(getattr(model, f"{side}_levels")):
            seq.register_forward_hook(record((side, level), lambda x, out: ("in", x.shape[-1], "out", out.shape[-1])))
            for block in seq:
                if isinstance(block, ResBlock):  # the feature-map size each ResBlock sees
                    block.register_forward_hook(record((side, level), lambda x, out: x.shape[-1]))
    x, noise_cond, text, mask, lowres, _ = batch()
    model(torch.randn(3, 3, 32, 32), noise_cond, text, mask, lowres)  # twice the training size
    # down: 32 -> level 0 blocks at 16 (downsampled first), level 1 at 8, deepest level 2 stays at 8
    assert sizes[("down", 0)] == [16, ("in", 32, "out", 16)]
    assert sizes[("down", 1)] == [8, 8, ("in", 16, "out", 8)]
    assert sizes[("down", 2)] == [8, 8, ("in", 8, "out", 8)]
    # up: blocks at the level's size, then upsampled on the way out
    assert sizes[("up", 2)] == [8, 8, ("in", 8, "out", 8)]
    assert sizes[("up", 1)] == [8, 8, ("in", 8, "out", 16)]
    assert sizes[("up", 0)] == [16, ("in", 16, "out", 32)]
    assert [type(seq[0]) for seq in model.down_levels[:2]] == [StridedDownsample] * 2
    assert [type(seq[-1]) for seq in model.up_levels[:2]] == [StridedUpsample] * 2
    assert not any(isinstance(b, (StridedDownsample, StridedUpsample)) for b in model.down_levels[2])


def test_stride_three_resamples_by_three(perturb):
    model = make_model(
        "sr", perturb, image_size=18, channel_mult=[1, 2], num_resblocks=1, atnn_enabled_at=[0, 1], stride=3
    )
    x, noise_cond, text, mask, lowres, _ = batch(image_size=18)
    assert model(x, noise_cond, text, mask, lowres).shape == x.shape
    assert model(torch.randn(3, 3, 36, 9), noise_cond, text, mask, lowres).shape == (3, 3, 36, 9)


def test_gradient_checkpointing_gives_identical_outputs_and_grads(perturb):
    plain = make_model("sr", perturb, dropout=0.2).train()
    ckpt = make_model("sr", perturb, dropout=0.2, gradient_checkpointing=True).train()
    ckpt.load_state_dict(plain.state_dict())
    inputs = batch()[:5]
    results = []
    for model in (plain, ckpt):
        torch.manual_seed(0)
        out = model(*inputs)
        out.square().mean().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-6, rtol=0)
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, atol=1e-6, rtol=1e-6, msg=name)


def test_tiny_efficient_unet_learns_to_super_resolve_a_fixed_batch():
    """Denoise 16x16 images given their 4x4 versions: the loss must fall by more than 10x."""
    torch.manual_seed(0)
    model = EfficientUNet(tiny_efficient_config(), TEXT_DIM, noise_cond_aug=True)
    gen = torch.Generator().manual_seed(0)
    x0 = F.interpolate(torch.rand(4, 3, 8, 8, generator=gen) * 2 - 1, size=16, mode="bilinear")
    lowres = F.interpolate(x0, size=4, mode="area")
    sigma = torch.tensor([0.2, 0.5, 1.0, 2.0])
    noisy = x0 + sigma[:, None, None, None] * torch.randn(x0.shape, generator=gen)
    _, _, text, mask, _, _ = batch(size=4)
    aug_level = torch.full((4,), -2.0)  # a small augmentation level, as at sampling
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(60):
        loss = (model(noisy, sigma.log() / 4, text, mask, lowres, aug_level) - x0).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])
