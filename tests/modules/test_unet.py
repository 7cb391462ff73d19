import pytest
import torch

from nemo_imagen.modules import UNet, UNetConfig, count_parameters
from nemo_imagen.modules import blocks as blocks_module

TEXT_DIM = 24


def make_unet(cfg, perturb, seed=0):
    torch.manual_seed(seed)
    return perturb(UNet(cfg, TEXT_DIM), seed=seed)


def batch(size=3, length=5, image_size=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(size, 3, image_size, image_size, generator=gen)
    noise_cond = torch.randn(size, generator=gen)
    text = torch.randn(size, length, TEXT_DIM, generator=gen)
    lengths = torch.tensor([2, length, 3, 1])[:size]
    mask = torch.arange(length)[None] < lengths[:, None]
    return x, noise_cond, text, mask


@pytest.mark.parametrize(
    "name, cfg, documented",
    [
        ("base64-500m", UNetConfig(), 524e6),
        ("base64-2b", UNetConfig(embed_dim=512, cond_dim=2048), 2100e6),
    ],
)
def test_documented_sizes_within_3_percent(name, cfg, documented):
    count = count_parameters("base", cfg, text_embed_dim=1024)
    assert abs(count / documented - 1) < 0.03, f"{name}: {count / 1e6:.1f}M vs {documented / 1e6:.0f}M"


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"resblock_updown": True},
        {"resample_with_conv": False},
        {"scale_shift_norm": False, "feature_pooling_type": "mean"},
        {"learned_sinu_pos_emb_dim": 16, "use_null_token": True},
        {"num_res_blocks": [1, 2], "attention_resolutions": [16, 8], "attention_type": "stacked"},
        {"attention_type": "self", "per_head_channels": 0, "num_attn_heads": 2},
        {"attention_type": "cross", "channel_mult": [1, 2, 2], "init_conv_kernel_size": 5},
    ],
)
def test_variants_build_and_count_consistently(overrides, tiny_config, perturb):
    cfg = tiny_config(**overrides)
    model = make_unet(cfg, perturb)
    assert count_parameters("base", cfg, TEXT_DIM) == sum(p.numel() for p in model.parameters())
    x, noise_cond, text, mask = batch()
    out = model(x, noise_cond, text, mask)
    assert out.shape == x.shape and torch.isfinite(out).all()
    other = model(x, noise_cond, torch.randn_like(text), mask)
    assert (other - out).abs().amax(dim=(1, 2, 3)).min() > 1e-4  # every sample reads its text


def test_fresh_unet_outputs_zero(tiny_config):
    torch.manual_seed(0)
    x, noise_cond, text, mask = batch()
    assert torch.equal(UNet(tiny_config(), TEXT_DIM)(x, noise_cond, text, mask), torch.zeros_like(x))


@pytest.mark.parametrize("use_null_token", [False, True])
@pytest.mark.parametrize("attention_type", ["fused", "cross", "self"])
def test_dropped_sample_ignores_its_text(use_null_token, attention_type, tiny_config, perturb):
    model = make_unet(tiny_config(use_null_token=use_null_token, attention_type=attention_type), perturb)
    x, noise_cond, text, mask = batch()
    drop = torch.tensor([True, False, False])
    out = model(x, noise_cond, text, mask, drop)
    other_text, other_mask = text.clone(), mask.clone()
    other_text[0] = 10 * torch.randn(5, TEXT_DIM)
    other_text[0, 0, 0] = float("nan")
    other_mask[0] = torch.tensor([False, True, False, True, True])
    other_text[1] = torch.randn(5, TEXT_DIM)
    out2 = model(x, noise_cond, other_text, other_mask, drop)
    assert torch.equal(out2[0], out[0])  # dropped: bit-identical
    assert (out2[1] - out[1]).abs().max() > 1e-4  # kept: the new text matters
    torch.testing.assert_close(out2[2], out[2], atol=1e-6, rtol=0)  # untouched sample unaffected


def test_null_token_changes_what_dropped_samples_see(tiny_config, perturb):
    x, noise_cond, text, mask = batch()
    drop = torch.ones(3, dtype=torch.bool)
    model = make_unet(tiny_config(use_null_token=True), perturb)
    out = model(x, noise_cond, text, mask, drop)
    with torch.no_grad():
        model.null_text.add_(1.0)
    assert (model(x, noise_cond, text, mask, drop) - out).abs().max() > 1e-4


@pytest.mark.parametrize("use_null_token", [False, True])
def test_dropped_output_independent_of_token_length(use_null_token, tiny_config, perturb):
    model = make_unet(tiny_config(use_null_token=use_null_token), perturb)
    x, noise_cond, text, mask = batch(length=5)
    _, _, long_text, long_mask = batch(length=11, seed=1)
    drop = torch.ones(3, dtype=torch.bool)
    torch.testing.assert_close(
        model(x, noise_cond, long_text, long_mask, drop), model(x, noise_cond, text, mask, drop), atol=1e-5, rtol=0
    )


def test_all_false_mask_gives_finite_output_equal_to_dropped(tiny_config, perturb):
    model = make_unet(tiny_config(), perturb)
    x, noise_cond, text, mask = batch()
    mask[0] = False
    out = model(x, noise_cond, text, mask)
    assert torch.isfinite(out).all()
    dropped = model(x, noise_cond, text, mask, torch.tensor([True, False, False]))
    torch.testing.assert_close(out, dropped, atol=1e-6, rtol=0)


def test_compute_paths_agree_in_the_unet(tiny_config, perturb):
    x, noise_cond, text, mask = batch()
    outs = []
    for flash, stable in [(True, False), (False, True), (False, False)]:
        model = make_unet(tiny_config(flash_attention=flash, stable_attention=stable), perturb)
        outs.append(model(x, noise_cond, text, mask))
    assert outs[0].abs().max() > 0.1
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs[2], outs[0], atol=1e-5, rtol=1e-5)


def _loss_and_grads(model, x, noise_cond, text, mask, seed=0):
    torch.manual_seed(seed)  # same dropout masks in both runs
    x = x.detach().clone().requires_grad_(True)
    out = model(x, noise_cond, text, mask)
    weights = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
    (out * weights).sum().backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
    model.zero_grad()
    return out.detach(), x.grad.detach(), grads


def test_gradient_checkpointing_gives_identical_outputs_and_grads(tiny_config, perturb, monkeypatch):
    cfg = tiny_config(dropout=0.2, attention_type="stacked")
    plain = make_unet(cfg, perturb).train()
    ckpt = make_unet(tiny_config(dropout=0.2, attention_type="stacked", gradient_checkpointing=True), perturb).train()
    ckpt.load_state_dict(plain.state_dict())
    calls = []

    def counting_checkpoint(fn, *args, **kwargs):
        calls.append(kwargs.get("use_reentrant"))
        return torch.utils.checkpoint.checkpoint(fn, *args, **kwargs)

    monkeypatch.setattr(blocks_module, "checkpoint", counting_checkpoint)
    inputs = batch()
    ref_out, ref_xgrad, ref_grads = _loss_and_grads(plain, *inputs)
    assert not calls
    out, xgrad, grads = _loss_and_grads(ckpt, *inputs)
    # 2 ResBlocks + 2 attention (input), 3 middle, 3 + 3 + 2 (output, incl. the 16x16 level's 2)
    assert len(calls) > 10 and set(calls) == {False}
    torch.testing.assert_close(out, ref_out, atol=1e-6, rtol=0)
    torch.testing.assert_close(xgrad, ref_xgrad, atol=1e-6, rtol=0)
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-6, rtol=1e-6, msg=name)
    ckpt.eval()
    calls.clear()
    with torch.no_grad():
        ckpt(*inputs)
    assert not calls  # no recomputation bookkeeping at inference


# float32 differs only by summation order (memory layout changes the reductions); float64 pins it down
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 3e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("attention_type", ["fused", "stacked"])
def test_channels_last_gives_same_outputs_and_grads(attention_type, dtype, tol, tiny_config, perturb):
    model = make_unet(tiny_config(attention_type=attention_type, resblock_updown=True), perturb).to(dtype)
    x, noise_cond, text, mask = (t.to(dtype) if t.is_floating_point() else t for t in batch())
    ref_out, ref_xgrad, ref_grads = _loss_and_grads(model, x, noise_cond, text, mask)
    out, xgrad, grads = _loss_and_grads(model, x.to(memory_format=torch.channels_last), noise_cond, text, mask)
    assert ref_out.abs().max() > 0.1
    torch.testing.assert_close(out, ref_out, atol=tol, rtol=tol)
    torch.testing.assert_close(xgrad, ref_xgrad, atol=tol, rtol=tol)
    # a parameter's gradient sums over batch and pixels in a layout-dependent order, and some are
    # exactly 0 in exact arithmetic (a bias before a GroupNorm): compare against the largest gradient
    scale = max(grad.abs().max() for grad in ref_grads.values())
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=4 * tol * scale, rtol=0, msg=name)


def test_reduced_precision_stays_close_to_float32(tiny_config, perturb):
    model = make_unet(tiny_config(), perturb)
    x, noise_cond, text, mask = batch()
    ref = model(x, noise_cond, text, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast_out = model(x, noise_cond, text, mask)
    bf16_out = model.to(torch.bfloat16)(x, noise_cond, text, mask)  # float32 inputs into a bf16 model
    assert bf16_out.dtype == torch.bfloat16
    scale = ref.abs().max()
    assert (autocast_out.float() - ref).abs().max() < 0.05 * scale
    assert (bf16_out.float() - ref).abs().max() < 0.1 * scale


def test_tiny_unet_overfits_a_fixed_denoising_batch(tiny_config):
    torch.manual_seed(0)
    model = UNet(tiny_config(image_size=16), TEXT_DIM)
    gen = torch.Generator().manual_seed(0)
    # smooth targets in [-1, 1]: 4x4 random patterns upsampled to 16x16
    x0 = torch.nn.functional.interpolate(torch.rand(4, 3, 4, 4, generator=gen) * 2 - 1, size=16, mode="bilinear")
    sigma = torch.tensor([0.1, 0.3, 0.6, 1.0])
    noisy = x0 + sigma[:, None, None, None] * torch.randn(x0.shape, generator=gen)
    _, _, text, mask = batch(size=4)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(60):
        loss = (model(noisy, sigma.log() / 4, text, mask) - x0).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 20, (losses[0], losses[-1])


def _block_output_dtypes(model, x, noise_cond, text, mask):
    """Run `model` under CPU bf16 autocast; -> (output, {level-0 / level-1 block name: output dtype, and "head_in":
    the output head's input dtype})."""
    dtypes = {}
    hooks = [
        block.register_forward_hook(lambda _m, _i, out, name=name: dtypes.__setitem__(name, out.dtype))
        for name, block in [("in0", model.input_blocks[0]), ("in_deep", model.input_blocks[2]),
                            ("out_deep", model.output_blocks[0]), ("out0", model.output_blocks[-1])]
    ]
    hooks.append(model.out.register_forward_pre_hook(lambda _m, args: dtypes.__setitem__("head_in", args[0].dtype)))
    with torch.autocast("cpu", torch.bfloat16):
        out = model(x, noise_cond, text, mask)
    for hook in hooks:
        hook.remove()
    return out, dtypes


def test_float32_resolutions_keep_those_levels_out_of_autocast(tiny_config, perturb):
    x, noise_cond, text, mask = batch()
    model = make_unet(tiny_config(float32_resolutions=[16]), perturb)
    out, dtypes = _block_output_dtypes(model, x, noise_cond, text, mask)
    assert out.dtype == torch.float32  # the output head goes with the image-size level
    assert dtypes == {
        "in0": torch.float32, "in_deep": torch.bfloat16, "out_deep": torch.bfloat16, "out0": torch.float32,
        "head_in": torch.float32,
    }
    plain = make_unet(tiny_config(), perturb)  # the same weights (same seed), every level under autocast
    out, dtypes = _block_output_dtypes(plain, x, noise_cond, text, mask)
    assert out.dtype == torch.bfloat16 and set(dtypes.values()) == {torch.bfloat16}  # the head's input is not cast up either


def test_every_level_in_float32_makes_the_trunk_exactly_float32(tiny_config, perturb):
    """The trunk under bf16 autocast with every level in float32 computes bit for bit what it computes without
    autocast; with no level in float32 it does not (so the comparison can fail)."""
    x, noise_cond, text, mask = batch()
    model = make_unet(tiny_config(float32_resolutions=[16, 8]), perturb)
    with torch.no_grad():
        emb, context, ctx_mask = model.condition(noise_cond, text, mask, None)
        reference = model.trunk(x, emb, context, ctx_mask)
        with torch.autocast("cpu", torch.bfloat16):
            kept = model.trunk(x, emb, context, ctx_mask)
        plain = make_unet(tiny_config(), perturb)
        with torch.autocast("cpu", torch.bfloat16):
            rounded = plain.trunk(x, emb, context, ctx_mask)
    assert torch.equal(kept, reference)
    assert (rounded.float() - reference).abs().max() > 1e-3


def test_float32_resolutions_change_no_parameter_name(tiny_config, perturb):
    """A checkpoint of either form loads into the other: the key only changes how blocks run."""
    plain = make_unet(tiny_config(), perturb)
    kept = UNet(tiny_config(float32_resolutions=[16]), TEXT_DIM)
    kept.load_state_dict(plain.state_dict(), strict=True)
