"""examples/benchmark.py: FLOP counting against closed forms, the peer's size, and the script's printed figures
(train with the diffusers peer, cascade sampling, full-size FLOP counts) checked for presence and consistency.
No timing is asserted: the CPU is shared."""
import importlib.util
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from benchmarks.throughput import (
    BenchConfig,
    build_diffusers_peer,
    count_flops,
    parse_bench_config,
    run_benchmark,
)
from nemo_imagen.models.config import ConfigError, validate_model_config
from nemo_imagen.modules import build_unet, count_parameters
from tests.tiny import REPO, TINY_CONDITIONING, TINY_UNET, TINY_UNETS, run_example

HAS_DIFFUSERS = importlib.util.find_spec("diffusers") is not None
needs_diffusers = pytest.mark.skipif(not HAS_DIFFUSERS, reason="diffusers (the bench extra) is not installed")
NUMBER = r"[-+0-9.e]+"

# The tiny base UNet at 32x32 (attention at 16), so that a subprocess run costs seconds.
TINY_32 = {**TINY_UNET, "image_size": 32, "attention_resolutions": [16]}


def overrides(unet, prefix="model", extra=()):
    unet_keys = [f"{prefix}.unet.{key}={value}".replace(" ", "") for key, value in unet.items()]
    cond_keys = [f"{prefix}.conditioning.{key}={value}" for key, value in TINY_CONDITIONING.items()]
    if "image_size" in unet:  # a base stage trains at its image size
        cond_keys.append(f"{prefix}.data.synthetic_data=True")  # no shards whose size must match
    return unet_keys + cond_keys + list(extra)


def parse(stdout):
    """{key: first token} of the benchmark's `key: value (note)` lines."""
    return {m.group(1): m.group(2) for m in re.finditer(r"^([\w.]+): (.*?)(?: \(.*\))?$", stdout, re.M)}


def num(values, key):
    assert key in values, f"{key} missing from the benchmark output"
    assert re.fullmatch(NUMBER, values[key]), f"{key}: {values[key]!r} is not a number"
    return float(values[key])


# ---------------------------------------------------------------- FLOP counting, by hand
def test_conv_flops_match_closed_form():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    x = torch.randn(2, 3, 16, 16)
    forward = 2 * 2 * 8 * 16 * 16 * 3 * 3 * 3  # 2 x batch x C_out x H x W x C_in x k x k
    assert count_flops(lambda: conv(x)) == forward
    # backward: the weight gradient costs one forward; the input gradient another, only if x needs it
    assert count_flops(lambda: conv(x).sum().backward()) == 2 * forward
    x.requires_grad_(True)
    assert count_flops(lambda: conv(x).sum().backward()) == 3 * forward


def test_linear_flops_match_closed_form():
    linear = nn.Linear(24, 40)
    x = torch.randn(5, 7, 24)
    assert count_flops(lambda: linear(x)) == 2 * 5 * 7 * 24 * 40


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_masked_attention_flops_are_counted_on_cpu(device):
    """torch's counter misses the CPU flash kernel; ours maps it. Forward: QK^T and PV, 2 x B h N M d each;
    backward: four products of the same size."""
    b, h, n, m, d = 2, 4, 64, 72, 32
    q = torch.randn(b, h, n, d, device=device, requires_grad=True)
    k = torch.randn(b, h, m, d, device=device, requires_grad=True)
    v = torch.randn(b, h, m, d, device=device, requires_grad=True)
    mask = torch.ones(b, 1, 1, m, dtype=torch.bool, device=device)
    product = 2 * b * h * n * m * d
    assert count_flops(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)) == 2 * product
    both = count_flops(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask).sum().backward())
    assert both == 6 * product


def test_unet_flops_same_on_cpu_and_meta():
    """The CPU count (real kernels, flash attention) equals the meta count (shapes only, attention as matmuls)."""
    typed, _ = validate_model_config(tiny_model_cfg(TINY_32))
    counts = []
    for device in ("cpu", "meta"):
        with torch.device(device):
            unet = build_unet("base", typed.unet, TINY_CONDITIONING["embed_dim"])
            x, sigma = torch.randn(2, 3, 32, 32), torch.randn(2)
            text, mask = torch.randn(2, 8, 16), torch.ones(2, 8, dtype=torch.bool)
        counts.append(count_flops(lambda: unet(x, sigma, text, mask).sum().backward()))
    assert counts[0] == counts[1] > 0


# ---------------------------------------------------------------- configuration
def tiny_model_cfg(unet):
    with initialize_config_dir(config_dir=str(REPO / "examples" / "conf"), version_base=None):
        return compose("base64-500m-edm", overrides(unet, extra=["trainer.precision=32"])).model


def test_bad_benchmark_keys_are_named():
    with pytest.raises(ConfigError, match="mode"):
        parse_bench_config({"mode": "inference"})
    with pytest.raises(ConfigError, match="rounds"):
        parse_bench_config({"rounds": "0"})
    with pytest.raises(ConfigError, match="steps"):
        parse_bench_config({"steps": "many"})
    with pytest.raises(ConfigError, match="cascade"):
        parse_bench_config({"mode": "train", "cascade": "sr256-600m-edm"})
    assert parse_bench_config({"mode": "sample", "sample_steps": "7"}).sample_steps == 7


def test_bad_override_exits_with_one_line():
    result = run_example("benchmark.py", "--config-name", "base64-500m-edm", "mode=flops", "model.unet.not_a_key=1",
                         check=False)
    assert result.returncode == 2
    assert "not_a_key" in result.stderr and "Traceback" not in result.stderr


@needs_diffusers
@pytest.mark.parametrize("name", ["base64-500m-edm", "base64-2b-edm"])
def test_peer_matches_documented_sizes_within_five_percent(name):
    with initialize_config_dir(config_dir=str(REPO / "examples" / "conf"), version_base=None):
        typed, _ = validate_model_config(compose(name).model)
    ours = count_parameters("base", typed.unet, typed.conditioning.embed_dim)
    with torch.device("meta"):
        peer, kwargs, _ = build_diffusers_peer(typed, ours)
    peer_params = sum(p.numel() for p in peer.parameters())
    assert abs(peer_params / ours - 1) < 0.05
    assert kwargs["attention_head_dim"] == typed.unet.per_head_channels and kwargs["norm_num_groups"] == 32


# ---------------------------------------------------------------- the script
def check_throughput(values, key, flops_key):
    images_per_s = num(values, f"{key}.images_per_s")
    achieved = num(values, f"{key}.achieved_tflops")
    assert images_per_s > 0
    assert achieved == pytest.approx(num(values, f"{key}.{flops_key}") * images_per_s / 1e12, rel=2e-3)
    assert num(values, f"{key}.utilisation_pct") == pytest.approx(
        100 * achieved / num(values, "ceiling_tflops"), rel=2e-3)
    assert values[f"{key}.peak_memory_gib"] == "n/a"  # CPU


@pytest.mark.slow
@needs_diffusers
def test_train_mode_with_peer_prints_consistent_figures():
    args = overrides(TINY_32, extra=["trainer.precision=bf16-mixed", "model.micro_batch_size=2",
                                     "model.inductor=False"])
    result = run_example("benchmark.py", "--config-name", "base64-500m-edm", *args, "mode=train",
                         "compare=diffusers", "warmup=1", "steps=1", "rounds=2", "ceiling_size=256")
    values = parse(result.stdout)
    for key in ("config", "device", "torch", "precision", "micro_batch", "channels_last", "compile", "attention",
                "gradient_checkpointing", "optimizer", "ema", "peer.model"):
        assert values.get(key), f"{key} missing:\n{result.stdout}"
    assert values["precision"] == "bf16-mixed" and values["compile"] == "False"
    assert num(values, "micro_batch") == 2 and num(values, "ceiling_tflops") > 0

    typed, _ = validate_model_config(tiny_model_cfg(TINY_32))
    ours_params = count_parameters("base", typed.unet, TINY_CONDITIONING["embed_dim"])
    assert num(values, "ours.params") == ours_params
    # the printed forward count equals a count of our UNet called directly on the same shapes (meta device)
    with torch.device("meta"):
        unet = build_unet("base", typed.unet, TINY_CONDITIONING["embed_dim"])
        direct = count_flops(lambda: unet(torch.empty(1, 3, 32, 32), torch.empty(1), torch.empty(1, 8, 16),
                                          torch.ones(1, 8, dtype=torch.bool)))
    assert num(values, "ours.forward_flops_per_image") == direct
    for key in ("ours", "peer"):
        forward, train = num(values, f"{key}.forward_flops_per_image"), num(values, f"{key}.train_flops_per_image")
        assert 2.5 * forward < train <= 3 * forward  # backward = 2 x forward, less the input image's gradient
        check_throughput(values, key, "train_flops_per_image")
        assert num(values, f"{key}.step_ms") == pytest.approx(
            1000 * num(values, "micro_batch") / num(values, f"{key}.images_per_s"), rel=2e-3)
    # the ratios are printed (a ratio of two printed figures is not re-derived here: that would test a division)
    assert num(values, "ratio.images_per_s") > 0 and num(values, "ratio.train_flops_per_image") > 0
    # the peer's size against our parameter count computed independently of the script
    assert num(values, "ratio.params") == pytest.approx(ours_params / num(values, "peer.params"), rel=2e-3)
    assert abs(num(values, "ratio.params") - 1) < 0.1  # a tiny UNet cannot be matched as closely as full sizes


@pytest.mark.slow
def test_cascade_sample_mode_prints_consistent_figures():
    args = overrides(TINY_UNET, extra=["trainer.precision=32"])
    sr = overrides(TINY_UNETS["sr"], prefix="cascade.model", extra=["cascade.trainer.precision=32"])
    result = run_example("benchmark.py", "--config-name", "base64-500m-edm", *args, *sr, "mode=sample",
                         "cascade=sr256-600m-edm", "sample_batch=1", "sample_steps=2", "cascade_steps=1",
                         "warmup=0", "steps=1", "rounds=1", "ceiling_size=256")
    values = parse(result.stdout)
    assert values["sampler"].startswith("edm, 2 steps")
    assert "256" in values["cascade"] and num(values, "sample_batch") == 1
    assert num(values, "ours.cascade_params") > 0
    check_throughput(values, "ours", "sample_flops_per_image")
    # Heun with 2 steps: 3 evaluations of the base UNet, each on the guided batch of 2 (one image x cond/uncond);
    # the SR stage's single step: 1 evaluation.
    base, _ = validate_model_config(tiny_model_cfg(TINY_UNET))
    with initialize_config_dir(config_dir=str(REPO / "examples" / "conf"), version_base=None):
        upper, _ = validate_model_config(compose("sr256-600m-edm", [o[len("cascade."):] for o in sr]).model)
    text, mask = torch.empty(2, 8, 16, device="meta"), torch.ones(2, 8, dtype=torch.bool, device="meta")
    with torch.device("meta"):
        base_unet = build_unet("base", base.unet, TINY_CONDITIONING["embed_dim"])
        sr_unet = build_unet("sr", upper.unet, TINY_CONDITIONING["embed_dim"], noise_cond_aug=True)
        base_call = count_flops(lambda: base_unet(torch.empty(2, 3, 64, 64), torch.empty(2), text, mask))
        sr_call = count_flops(lambda: sr_unet(torch.empty(2, 3, 256, 256), torch.empty(2), text, mask,
                                              lowres=torch.empty(2, 3, 64, 64), lowres_noise_cond=torch.empty(2)))
    assert num(values, "ours.sample_flops_per_image") == 3 * base_call + sr_call


@needs_diffusers
def test_flops_mode_counts_full_size_without_allocating():
    with initialize_config_dir(config_dir=str(REPO / "examples" / "conf"), version_base=None):
        cfg = compose("base64-500m-edm", ["model.micro_batch_size=1"])
    lines = []
    values = run_benchmark(cfg, BenchConfig(mode="flops", compare="diffusers"), write=lines.append)
    typed, _ = validate_model_config(cfg.model)
    assert values["ours.params"] == count_parameters("base", typed.unet, typed.conditioning.embed_dim)
    forward = values["ours.forward_flops_per_image"]
    # docs/performance.md (FLOPs table): 353.7 GFLOP forward per 64x64 image for this UNet
    assert 0.2e12 < forward < 0.5e12
    assert values["ours.train_flops_per_image"] == pytest.approx(3 * forward, rel=1e-3)
    # docs/performance.md (same table): ours / peer FLOPs 0.914, the IF-layout peer of equal size costs more
    assert 0.9 < values["ratio.forward_flops_per_image"] < 0.93
    assert any(line.startswith("peer.model: diffusers") for line in lines)
