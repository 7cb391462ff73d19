"""Throughput of one Imagen stage, measured the way examples/benchmark.py reports it.

- Inputs are synthetic and live on the device: images in [-1, 1] and precached-style text embeddings with a
  mask, so neither the data loader nor a text encoder is measured.
- `train`: the training step of `MegatronImagen`, run by the same function its Lightning hooks call
  (`nemo_imagen.diffusion.train_step`: per-sample noise draws, preconditioned loss, backward, numerical guard,
  gradient clipping, the configured AdamW step, the warmed-up EMA update) under the autocast of
  `model.precision`, with the UNet in channels-last and compiled when the config says so.
- `sample`: `MegatronImagen.sample` (the configured sampler, classifier-free guidance as one batch).
- `flops`: FLOP counts only, on the meta device, so full-size models cost no memory and no time.
- Model FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` (matrix products, convolutions and
  attention; normalisation and elementwise work are not model FLOPs), not estimated.
- Utilisation is achieved FLOP/s over a ceiling measured in the same process: a large matrix product in
  the run's precision.
- The peer (`compare=diffusers`) is diffusers' `UNet2DConditionModel` in DeepFloyd IF's layout (IF is
  diffusers' Imagen-style pixel UNet: scale-shift ResBlocks, attention with the text tokens appended to the
  image keys, attention-pooled text added to the time embedding), sized to our UNet's parameter count. It
  runs through the same loss, optimizer, sampler and autocast on the same inputs, interleaved with ours
  round by round so that load from other processes affects both alike.
"""
import contextlib
import copy
import dataclasses
import itertools
import math
import platform
import resource
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from nemo_imagen.data.synthetic import synthetic_text_batch
from nemo_imagen.diffusion import (
    SAMPLERS,
    THRESHOLDS,
    TrainingBatch,
    build_preconditioning,
    train_step,
    training_loss,
)
from nemo_imagen.models.config import AUTOCAST_DTYPES, ConfigError, validate_model_config
from nemo_imagen.models.megatron_base import build_optimizer
from nemo_imagen.modules.attention import attention_mode
from nemo_imagen.modules import build_unet
from nemo_imagen.modules.config import UNetConfig
from nemo_imagen.precision import choose_precision

MODES = ("train", "sample", "flops")
PEERS = ("none", "diffusers")
FP32_PRECISIONS = ("32", "32-true")
# Steps (in units of lcm(32, head width) channels) tried on the peer's two deepest levels to match our parameters.
PEER_WIDTH_STEPS = (-2, -1, 0, 1)
PEER_PARAMS_TOLERANCE = 0.02


@dataclass
class BenchConfig:
    """The benchmark's own keys (everything else on the command line is a training-config override).

    mode: train | sample | flops. compare: none | diffusers.
    warmup: untimed steps (train) or sampling calls (sample) per model before timing.
    steps: timed steps or sampling calls per model and round; rounds: ours and the peer alternate per round.
    sample_batch: prompts per sampling call (guidance doubles the UNet batch).
    cascade: name of a super-resolution config sampled on the base stage's output (mode=sample), e.g.
        sr256-600m-edm; `cascade.KEY=VALUE` on the command line overrides that config. cascade_steps and
        cascade_cfg_scale are its sampling steps and guidance scale (same sampler).
    ceiling_size: side of the square matrix product measuring the ceiling (0: 8192 on GPU, 2048 on CPU).
    """

    mode: str = "train"
    compare: str = "none"
    device: str = "auto"
    warmup: int = 3
    steps: int = 10
    rounds: int = 3
    sample_batch: int = 32
    sampler: str = "edm"
    sample_steps: int = 30
    cfg_scale: float = 4.0
    thresholding: str = "dynamic"
    cascade: Optional[str] = None
    cascade_steps: int = 20
    cascade_cfg_scale: float = 4.0
    ceiling_size: int = 0
    seed: int = 0

    def __post_init__(self):
        choices = {"mode": MODES, "compare": PEERS, "sampler": tuple(SAMPLERS), "thresholding": THRESHOLDS}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"{key}: {getattr(self, key)!r} is not one of {', '.join(allowed)}")
        if self.cascade and self.mode != "sample":
            raise ConfigError(f"cascade: only mode=sample samples a cascade (mode is {self.mode})")
        if self.cascade and self.compare != "none":
            raise ConfigError("compare: the peer runs single base stages; leave compare=none with cascade")
        if self.device != "auto" and self.device.split(":")[0] not in ("cpu", "cuda"):
            raise ConfigError(f"device: {self.device!r} is not auto, cpu or cuda[:N]")
        for key in ("steps", "rounds", "sample_batch", "sample_steps", "cascade_steps"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}: {getattr(self, key)} must be at least 1")
        for key in ("warmup", "ceiling_size"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}: {getattr(self, key)} must not be negative")


def parse_bench_config(overrides: Dict[str, str]) -> BenchConfig:
    """{key: command-line value} -> BenchConfig; a bad key or value raises ConfigError naming it."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(BenchConfig), OmegaConf.from_dotlist(
            [f"{key}={value}" for key, value in overrides.items()]))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "benchmark"
        raise ConfigError(f"{key}: {str(error).splitlines()[0]}") from None


# ---------------------------------------------------------------- measuring
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name} requested but torch sees no CUDA device")
    return device


def autocast_dtype(precision) -> Optional[torch.dtype]:
    """The autocast dtype of a Lightning precision name (None: plain float32)."""
    name = str(precision)
    if name in FP32_PRECISIONS:
        return None
    if name not in AUTOCAST_DTYPES:
        allowed = ", ".join((*FP32_PRECISIONS, *AUTOCAST_DTYPES))
        raise ConfigError(f"model.precision: {name!r} is not one the benchmark runs ({allowed})")
    return getattr(torch, AUTOCAST_DTYPES[name])


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    return torch.autocast(device.type, dtype or torch.float32, enabled=dtype is not None)


def _attention_flops(query, key, value, *args, **kwargs) -> int:
    """scores = Q K^T and out = P V."""
    return sdpa_flop_count(query, key, value)


def _attention_backward_flops(grad_out, query, key, value, *args, **kwargs) -> int:
    """dP = dO V^T, dV = P^T dO, dQ = dS K, dK = dS^T Q. Model FLOPs: the fused kernels' recomputation of
    Q K^T (which torch's own formula adds) is left out, as for any recomputation."""
    b, h, s_q, d_q = query
    s_k, d_v = key[2], value[3]
    return 4 * b * h * s_q * s_k * (d_q + d_v)


_ATTENTION_BACKWARD_OPS = [
    "_scaled_dot_product_flash_attention_for_cpu_backward",
    "_scaled_dot_product_flash_attention_backward",
    "_scaled_dot_product_efficient_attention_backward",
    "_scaled_dot_product_cudnn_attention_backward",
]
# torch's FLOP counter does not know the CPU flash kernel that scaled_dot_product_attention uses on CPU (its
# attention would count as zero), and counts the GPU kernels' backward with the recomputed scores. With these
# every device counts what the plain math path (and the meta device) counts.
ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _attention_flops,
    **{getattr(torch.ops.aten, name): _attention_backward_flops for name in _ATTENTION_BACKWARD_OPS
       if hasattr(torch.ops.aten, name)},
}


def count_flops(fn: Callable[[], object]) -> int:
    """Model FLOPs of running `fn()` (matrix products, convolutions, attention; backward included if fn runs it)."""
    with FlopCounterMode(display=False, custom_mapping=ATTENTION_FLOPS) as counter:
        fn()
    return int(counter.get_total_flops())


class DeviceTimer:
    """Wall time of n calls: CUDA events on a GPU (queued work included), perf_counter on CPU."""

    def __init__(self, device: torch.device):
        self.device = device

    def seconds(self, fn: Callable[[], object], n: int) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(n):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1000.0
        start = time.perf_counter()
        for _ in range(n):
            fn()
        return time.perf_counter() - start


def matmul_ceiling_tflops(device: torch.device, dtype: Optional[torch.dtype], size: int, min_seconds: float = 0.5):
    """Achieved TFLOP/s of a size^3 matrix product in `dtype` (float32 when None), timed for >= min_seconds."""
    dtype = dtype or torch.float32
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    timer = DeviceTimer(device)
    timer.seconds(lambda: a @ b, 2)  # warm-up: kernel selection, page-in
    once = timer.seconds(lambda: a @ b, 1)
    repeats = max(3, math.ceil(min_seconds / max(once, 1e-6)))
    seconds = timer.seconds(lambda: a @ b, repeats)
    return 2.0 * size**3 * repeats / seconds / 1e12


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (1 GPU)"
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"cpu: {model}, {torch.get_num_threads()} threads"


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


# ---------------------------------------------------------------- the models compared
@dataclass
class Contestant:
    """One network in the comparison. `module` is the eager UNet (FLOPs, parameters); `net` is what runs
    (the compiled module when model.inductor); both take our UNet's call signature."""

    key: str  # ours | peer
    description: str
    module: nn.Module
    net: Callable
    optimizer: Optional[torch.optim.Optimizer] = None
    ema: Optional[nn.Module] = None  # the EMA copy of `module`, when model.ema.enable

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def resident_bytes(self) -> int:
        """Weights, EMA copy and optimizer state: what stays allocated between steps (grads are freed)."""
        state = [t for s in (self.optimizer.state.values() if self.optimizer else ()) for t in s.values()
                 if torch.is_tensor(t)]
        ema = list(self.ema.parameters()) if self.ema is not None else []
        return tensor_bytes(self.module.parameters()) + tensor_bytes(ema) + tensor_bytes(state)


class DiffusersPeer(nn.Module):
    """diffusers' UNet2DConditionModel behind our UNet's call signature
    net(x, noise_cond, text_embed, text_mask, drop_text) -> [B, C, H, W].

    Dropped samples (classifier-free guidance) get zero text with only the first token unmasked, as ours.
    The text mask reaches diffusers' attention as `encoder_attention_mask`; its pooled-text embedding
    (TextTimeEmbedding) has no mask argument and pools over all tokens."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x, noise_cond, text_embed, text_mask, drop_text=None):
        text_mask = text_mask.bool()
        if drop_text is not None:
            drop = drop_text.bool()
            first_token = torch.arange(text_mask.shape[1], device=text_mask.device) == 0
            text_embed = torch.where(drop[:, None, None], torch.zeros_like(text_embed), text_embed)
            text_mask = torch.where(drop[:, None], first_token, text_mask)
        return self.unet(
            x, noise_cond, encoder_hidden_states=text_embed, encoder_attention_mask=text_mask, return_dict=False
        )[0]


def diffusers_peer_kwargs(cfg: UNetConfig, text_embed_dim: int, channels: List[int]) -> dict:
    """UNet2DConditionModel arguments in DeepFloyd IF's layout with our levels (widths `channels`), ResBlocks per
    level, attention resolutions, head width, GroupNorm groups (32) and text widths."""
    has_attention = [cfg.has_attention(level) for level in range(cfg.num_levels)]
    if cfg.per_head_channels > 0:
        head_dim = cfg.per_head_channels
    else:  # a fixed head count: diffusers takes one head width, so use the widest that divides every level
        attention_channels = [ch for ch, attn in zip(channels, has_attention) if attn] + [channels[-1]]
        head_dim = math.gcd(*attention_channels) // cfg.num_attn_heads
    blocks = cfg.res_blocks_per_level()
    return dict(
        sample_size=cfg.image_size,
        in_channels=cfg.channels,
        out_channels=cfg.channels,
        down_block_types=tuple("SimpleCrossAttnDownBlock2D" if a else "ResnetDownsampleBlock2D" for a in has_attention),
        up_block_types=tuple(
            "SimpleCrossAttnUpBlock2D" if a else "ResnetUpsampleBlock2D" for a in reversed(has_attention)
        ),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        block_out_channels=tuple(channels),
        layers_per_block=blocks[0] if len(set(blocks)) == 1 else tuple(blocks),
        norm_num_groups=32,
        attention_head_dim=head_dim,
        only_cross_attention=cfg.attention_type == "cross",
        cross_attention_dim=cfg.cond_dim,
        cross_attention_norm="group_norm" if cfg.cond_dim % 32 == 0 else None,
        encoder_hid_dim=text_embed_dim,
        encoder_hid_dim_type="text_proj",
        addition_embed_type="text",
        addition_embed_type_num_heads=cfg.cond_dim // head_dim if cfg.cond_dim % head_dim == 0 else 1,
        resnet_time_scale_shift="scale_shift" if cfg.scale_shift_norm else "default",
        resnet_skip_time_act=True,
        time_embedding_act_fn="gelu",
        dropout=float(cfg.dropout),
    )


def build_diffusers_peer(typed, target_params: int):
    """-> (DiffusersPeer, its kwargs, description) for the base stage of config `typed`: the IF-layout UNet with
    our level widths, except that the two deepest levels (where most parameters are) may be narrowed or widened
    by whole steps of lcm(32, head width) channels: the fewest steps that bring the parameter count within
    PEER_PARAMS_TOLERANCE of target_params, else the count closest to it. GroupNorm groups and head width stay ours, so the same GPU kernels apply. Candidates are
    counted on the meta device."""
    if typed.unet_type != "base":
        raise ConfigError(
            f"compare: the diffusers peer is built for base stages (unet_type base), not {typed.unet_type!r}"
        )
    try:
        import diffusers
        from diffusers import UNet2DConditionModel
    except ImportError:
        raise ConfigError(
            "compare: diffusers is not installed; install the benchmark extra: pip install -e '.[bench]'"
        ) from None
    cfg, text_embed_dim = typed.unet, typed.conditioning.embed_dim
    ours = [cfg.level_channels(level) for level in range(cfg.num_levels)]
    kwargs = diffusers_peer_kwargs(cfg, text_embed_dim, ours)
    quantum = math.lcm(32, kwargs["attention_head_dim"])
    best = None
    for steps in itertools.product(PEER_WIDTH_STEPS, repeat=min(2, len(ours))):
        channels = list(ours)
        for level, step in zip(reversed(range(len(ours))), steps):
            channels[level] += step * quantum
        if min(channels) <= 0:
            continue
        candidate = diffusers_peer_kwargs(cfg, text_embed_dim, channels)
        with torch.device("meta"):
            count = sum(p.numel() for p in UNet2DConditionModel(**candidate).parameters())
        # within PEER_PARAMS_TOLERANCE, the candidate closest to our widths; otherwise the closest in size
        miss = abs(count / target_params - 1)
        score = (miss > PEER_PARAMS_TOLERANCE, sum(map(abs, steps)) if miss <= PEER_PARAMS_TOLERANCE else miss)
        if best is None or score < best[1]:
            best = (candidate, score)
    kwargs = best[0]
    unet = UNet2DConditionModel(**kwargs)
    description = (
        f"diffusers {diffusers.__version__} UNet2DConditionModel, DeepFloyd IF layout, widths "
        f"{list(kwargs['block_out_channels'])}, head width {kwargs['attention_head_dim']}"
    )
    return DiffusersPeer(unet), kwargs, description


def _prepare(module: nn.Module, device, channels_last: bool, gradient_checkpointing: bool, compile_: bool):
    module.to(device)
    if channels_last:
        module.to(memory_format=torch.channels_last)
    if gradient_checkpointing and hasattr(module, "unet"):
        module.unet.enable_gradient_checkpointing()
    return torch.compile(module) if compile_ else module


# ---------------------------------------------------------------- synthetic inputs
@dataclass
class Inputs:
    images: torch.Tensor  # [B, C, H, W] in [-1, 1]
    text_embed: torch.Tensor  # [B, L, D]
    text_mask: torch.Tensor  # [B, L] bool, a real prefix of varying length
    lowres: Optional[torch.Tensor] = None  # [B, C, h, w] in [-1, 1]: a super-resolution stage's input


def synthetic_inputs(typed, batch: int, device, seed: int, channels_last: bool, sampling: bool = False) -> Inputs:
    """Images at the stage's training resolution (its output size when `sampling`), text embeddings with a
    real prefix of random length (as the synthetic data loader makes them), and for an SR stage its low-res
    input."""
    generator = torch.Generator().manual_seed(seed)
    unet, cond = typed.unet, typed.conditioning
    if sampling:
        size, low = unet.image_size, typed.low_resolution
    else:
        resolutions = typed.training_resolutions()
        size, low = resolutions[-1], resolutions[0] if typed.is_super_resolution else None
    images = torch.rand(batch, unet.channels, size, size, generator=generator) * 2 - 1
    text_embed, text_mask = synthetic_text_batch(batch, cond.token_length, cond.embed_dim, generator)
    lowres = None if low is None else torch.rand(batch, unet.channels, low, low, generator=generator) * 2 - 1
    images = images.to(device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return Inputs(images, text_embed.to(device), text_mask.to(device),
                  None if lowres is None else lowres.to(device))


def training_batch(inputs: Inputs, keyed: bool = True) -> TrainingBatch:
    """The synthetic inputs as a training batch; each sample keyed `synthetic/{index}` as the synthetic data
    loader keys it (keyed False: no keys, so the loss draws its noise batched, for FLOP counting)."""
    keys = [f"synthetic/{i}" for i in range(inputs.images.shape[0])] if keyed else None
    return TrainingBatch(inputs.images, inputs.text_embed, inputs.text_mask, keys, inputs.lowres)


def flops_loss(typed, precond, net, inputs: Inputs) -> torch.Tensor:
    """The training loss with batched draws (the meta device has no per-sample generators; same model FLOPs)."""
    batch = training_batch(inputs, keyed=False)
    return training_loss(
        precond, net, batch.images, batch.text_embed, batch.text_mask, seed=typed.seed, step=0, sample_keys=None,
        drop_rate=typed.conditioning.drop_rate, lowres=batch.lowres, noise_cond_aug=typed.noise_cond_aug,
    )


def model_train_step(typed, precond, contestant: "Contestant", batch: TrainingBatch, step: int, grad_clip: float,
                     scaler=None, autocast_fn=None):
    """One training step of `contestant` exactly as MegatronImagen trains: `nemo_imagen.diffusion.train_step`
    with the model config's seed, text-drop rate, noise augmentation and EMA decay. -> (loss, step taken)."""
    return train_step(
        contestant.optimizer, precond, contestant.module, batch, step=step, seed=typed.seed,
        drop_rate=typed.conditioning.drop_rate, noise_cond_aug=typed.noise_cond_aug, net=contestant.net,
        ema_unet=contestant.ema, ema_decay=typed.ema.decay, grad_clip=grad_clip, scaler=scaler,
        autocast=autocast_fn,
    )


# ---------------------------------------------------------------- report
class Report:
    """Prints `key: value` lines (what the tests and users read) and keeps the numbers."""

    def __init__(self, write: Callable[[str], None] = print):
        self.write = write
        self.values: Dict[str, object] = {}

    def __call__(self, key: str, value, note: str = ""):
        self.values[key] = value
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        self.write(f"{key}: {text}" + (f" ({note})" if note else ""))


def _backend_settings(cfg: DictConfig, device):
    """As a training run: TF32 on (models/trainer_builder.py), cuDNN autotuning as `trainer.benchmark` says."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = bool((cfg.get("trainer") or {}).get("benchmark", False))


def _settings(report: Report, cfg: DictConfig, typed, bench: BenchConfig, device, dtype, compile_: bool):
    report("config", cfg.get("name", "?"))
    report("mode", bench.mode)
    report("device", device_description(device))
    report("torch", torch.__version__)
    report("precision", str(typed.precision), f"autocast {dtype}" if dtype else "float32, no autocast")
    if typed.is_super_resolution:
        low, high = typed.training_resolutions() if bench.mode == "train" else (typed.low_resolution,
                                                                                  typed.unet.image_size)
        report("resolution", f"{low} -> {high}", f"{typed.unet_type} stage")
    else:
        report("resolution", typed.unet.image_size)
    report("text_tokens", f"{typed.conditioning.token_length} x {typed.conditioning.embed_dim}")
    report("channels_last", typed.channels_last)
    report("compile", compile_, "model.inductor" if bench.mode == "train" else "MegatronImagen.sample runs eagerly")
    unet = typed.unet
    mode = attention_mode(unet.flash_attention, unet.stable_attention)
    report("attention", f"{unet.attention_type} / {mode}",
           "scaled_dot_product_attention" if mode == "flash" else "explicit matmul + softmax")
    report("gradient_checkpointing", unet.gradient_checkpointing)


def _ceiling(report: Report, bench: BenchConfig, device, dtype) -> float:
    size = bench.ceiling_size or (8192 if device.type == "cuda" else 2048)
    tflops = matmul_ceiling_tflops(device, dtype, size)
    tf32 = dtype is None and device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32
    report("ceiling_tflops", tflops, f"{dtype or torch.float32}{' (TF32)' if tf32 else ''} matmul {size}^3")
    return tflops


def _peak_memory(report: Report, key: str, device, peak: Optional[int], other: Optional[Contestant]):
    if peak is None:
        report(f"{key}.peak_memory_gib", "n/a", "CPU: torch tracks allocator peaks on CUDA only")
        return
    if other is not None:
        peak -= other.resident_bytes()
    note = "torch.cuda.max_memory_allocated" + (", the other model's weights and optimizer state subtracted"
                                                if other is not None else "")
    report(f"{key}.peak_memory_gib", peak / 2**30, note)


def _timed_rounds(contestants, run_once: Callable, bench: BenchConfig, device):
    """Warm-up, then `rounds` rounds in which each contestant runs `steps` times: {key: [seconds per round]},
    {key: peak allocated bytes or None}."""
    timer = DeviceTimer(device)
    for contestant in contestants:
        for _ in range(bench.warmup):
            run_once(contestant)
    seconds = {c.key: [] for c in contestants}
    peaks = {c.key: None for c in contestants}
    for _ in range(bench.rounds):
        for contestant in contestants:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            seconds[contestant.key].append(timer.seconds(lambda: run_once(contestant), bench.steps))
            if device.type == "cuda":
                peak = torch.cuda.max_memory_allocated(device)
                peaks[contestant.key] = max(peaks[contestant.key] or 0, peak)
    return seconds, peaks


def _throughput(report, contestants, seconds, peaks, flops_key, flops, images_per_call, bench, device, ceiling,
                call_name):
    results = {}
    for contestant in contestants:
        key = contestant.key
        per_round = [images_per_call * bench.steps / s for s in seconds[key]]
        images_per_s = images_per_call * bench.steps * bench.rounds / sum(seconds[key])
        results[key] = images_per_s
        report(f"{key}.images_per_s", images_per_s, "rounds: " + ", ".join(f"{v:.4g}" for v in per_round))
        report(f"{key}.{call_name}_ms", 1000.0 * sum(seconds[key]) / (bench.steps * bench.rounds))
        achieved = flops[key][flops_key] * images_per_s / 1e12
        report(f"{key}.achieved_tflops", achieved, f"{flops_key} x images_per_s")
        report(f"{key}.utilisation_pct", 100.0 * achieved / ceiling, "of ceiling_tflops")
        other = next((c for c in contestants if c is not contestant), None)
        _peak_memory(report, key, device, peaks[key], other)
    if len(contestants) == 2:
        report("ratio.images_per_s", results["ours"] / results["peer"], "ours / peer")
        report(f"ratio.{flops_key}", flops["ours"][flops_key] / flops["peer"][flops_key], "ours / peer")
        report("ratio.params", contestants[0].params / contestants[1].params, "ours / peer")


def _describe(report: Report, contestant: Contestant):
    report(f"{contestant.key}.model", contestant.description)
    report(f"{contestant.key}.params", contestant.params)


def _flops_line(report: Report, key: str, name: str, total: int, batch: int):
    per_image = total / batch
    report(f"{key}.{name}", round(per_image), f"{per_image / 1e9:.4g} GFLOP")
    return per_image


# ---------------------------------------------------------------- modes
def _train_flops(typed, precond, module, inputs: Inputs, dtype, device) -> Dict[str, float]:
    """FLOPs per image of a forward pass (the loss) and of a training step (loss forward + backward)."""
    batch = inputs.images.shape[0]

    def forward():
        with torch.no_grad(), autocast(device, dtype):
            flops_loss(typed, precond, module, inputs)

    def forward_backward():
        with autocast(device, dtype):
            loss = flops_loss(typed, precond, module, inputs)
        loss.backward()

    forward_flops = count_flops(forward)
    train_flops = count_flops(forward_backward)
    module.zero_grad(set_to_none=True)
    return {"forward_flops_per_image": forward_flops / batch, "train_flops_per_image": train_flops / batch}


def _setup_run(cfg: DictConfig, bench: BenchConfig):
    """-> (device, the typed model config with its precision resolved for the device, autocast dtype); applies
    the backend settings and seeds torch from the config."""
    device = resolve_device(bench.device)
    typed, _ = validate_model_config(cfg.model)
    typed.precision = choose_precision(typed.precision, device.type)[0]  # `auto`: what suits this device
    dtype = autocast_dtype(typed.precision)
    _backend_settings(cfg, device)
    torch.manual_seed(typed.seed)
    return device, typed, dtype


def run_train(report: Report, cfg: DictConfig, bench: BenchConfig):
    from nemo_imagen.models.imagen import MegatronImagen  # NeMo import: only when a model is built

    device, typed, dtype = _setup_run(cfg, bench)
    stage = MegatronImagen(cfg.model).to(device).train()
    compile_ = typed.inductor
    batch = typed.micro_batch_size
    grad_clip = (cfg.get("trainer") or {}).get("gradient_clip_val") or 0.0
    _settings(report, cfg, typed, bench, device, dtype, compile_)
    report("micro_batch", batch)
    fused = typed.optim.name == "fused_adam" and torch.cuda.is_available()
    report("optimizer", typed.optim.name, f"AdamW, fused kernel: {'yes' if fused else 'no'}")
    report("grad_clip", float(grad_clip))
    report("ema", typed.ema.enable)
    report("timing", f"warmup {bench.warmup}, {bench.rounds} rounds x {bench.steps} steps per model")

    ours = Contestant(
        "ours", f"nemo_imagen UNet ({typed.unet_type})", stage.unet, stage._net(),
        build_optimizer(stage.unet.parameters(), typed.optim), stage.ema_unet,
    )
    contestants = [ours]
    if bench.compare == "diffusers":
        peer_module, _, description = build_diffusers_peer(typed, ours.params)
        net = _prepare(peer_module, device, typed.channels_last, typed.unet.gradient_checkpointing, compile_)
        ema = copy.deepcopy(peer_module).requires_grad_(False).eval() if typed.ema.enable else None
        contestants.append(Contestant("peer", description, peer_module, net,
                                      build_optimizer(peer_module.parameters(), typed.optim), ema))
    # fp16 (16-mixed) needs a loss scaler, one per model as each has its own optimizer
    scalers = {c.key: torch.amp.GradScaler(device.type) if dtype == torch.float16 else None for c in contestants}
    inputs = synthetic_inputs(typed, batch, device, bench.seed, typed.channels_last)
    ceiling = _ceiling(report, bench, device, dtype)

    flops = {}
    for contestant in contestants:
        _describe(report, contestant)
        flops[contestant.key] = _train_flops(typed, stage.precond, contestant.module, inputs, dtype, device)
        for name, per_image in flops[contestant.key].items():
            _flops_line(report, contestant.key, name, per_image * batch, batch)

    batch_inputs = training_batch(inputs)
    steps_done = {c.key: 0 for c in contestants}

    def one_step(contestant: Contestant):
        step = steps_done[contestant.key]
        steps_done[contestant.key] += 1
        model_train_step(typed, stage.precond, contestant, batch_inputs, step, grad_clip, scalers[contestant.key],
                         lambda: autocast(device, dtype))

    seconds, peaks = _timed_rounds(contestants, one_step, bench, device)
    _throughput(report, contestants, seconds, peaks, "train_flops_per_image", flops, batch, bench, device, ceiling,
                "step")


@contextlib.contextmanager
def stage_network(stage, net: nn.Module):
    """Within the block, `stage.sample(use_ema=False)` runs `net` (same signature as our UNet) instead of the
    stage's own UNet: the peer goes through exactly the same sampling loop."""
    own = stage.unet
    stage.unet = net
    try:
        yield stage
    finally:
        stage.unet = own


def _build_sampling_stage(model_cfg: DictConfig, device):
    from nemo_imagen.models.imagen import MegatronImagen  # NeMo import: only when a model is built

    model_cfg = OmegaConf.create(OmegaConf.to_container(model_cfg, resolve=True))
    model_cfg.ema.enable = False  # sampling speed does not depend on which weights; no second copy needed
    return MegatronImagen(model_cfg).to(device).eval()


def run_sample(report: Report, cfg: DictConfig, bench: BenchConfig, cascade_cfg: Optional[DictConfig] = None):
    """Sampling throughput through `MegatronImagen.sample`: one stage (an SR stage alone samples from synthetic
    low-res images), or with `cascade_cfg` the base stage followed by that SR stage on its output."""
    device, typed, dtype = _setup_run(cfg, bench)
    stage = _build_sampling_stage(cfg.model, device)
    upper = None
    if cascade_cfg is not None:
        upper = _build_sampling_stage(cascade_cfg.model, device)
        if typed.is_super_resolution or upper.typed_cfg.low_resolution != typed.unet.image_size:
            raise ConfigError(
                f"cascade: {cascade_cfg.get('name')} must be a super-resolution stage taking "
                f"{typed.unet.image_size}x{typed.unet.image_size} images from the base stage {cfg.get('name')}"
            )
        if autocast_dtype(choose_precision(upper.typed_cfg.precision, device.type)[0]) != dtype:
            raise ConfigError("cascade.model.precision: the cascade's stages must share one precision")
    batch = bench.sample_batch
    _settings(report, cfg, typed, bench, device, dtype, False)
    report("sample_batch", batch, f"classifier-free guidance runs {2 * batch} per UNet call"
           if bench.cfg_scale != 1 else "no guidance")
    report("sampler", f"{bench.sampler}, {bench.sample_steps} steps, cfg {bench.cfg_scale}, {bench.thresholding}")
    if upper is not None:
        report("cascade", f"{cfg.get('name')} {typed.unet.image_size} -> {cascade_cfg.get('name')} "
               f"{upper.typed_cfg.unet.image_size}: {bench.cascade_steps} steps, cfg {bench.cascade_cfg_scale}")
    report("timing", f"warmup {bench.warmup}, {bench.rounds} rounds x {bench.steps} sampling calls per model")

    description = f"nemo_imagen UNet ({typed.unet_type})"
    if upper is not None:
        description += f" + {upper.typed_cfg.unet_type} stage"
    ours = Contestant("ours", description, stage.unet, stage.unet)
    contestants = [ours]
    if bench.compare == "diffusers":
        peer_module, _, description = build_diffusers_peer(typed, ours.params)
        _prepare(peer_module, device, typed.channels_last, False, False).eval()
        contestants.append(Contestant("peer", description, peer_module, peer_module))
    inputs = synthetic_inputs(typed, batch, device, bench.seed, typed.channels_last, sampling=True)
    ceiling = _ceiling(report, bench, device, dtype)

    def sample_once(contestant: Contestant):
        generator = torch.Generator(device=device).manual_seed(bench.seed)
        options = dict(sampler=bench.sampler, thresholding=bench.thresholding, generator=generator, use_ema=False,
                       precision=typed.precision)
        with stage_network(stage, contestant.net):
            images = stage.sample(inputs.text_embed, inputs.text_mask, lowres=inputs.lowres,
                                  steps=bench.sample_steps, guidance_scale=bench.cfg_scale, **options)
        if upper is not None:
            images = upper.sample(inputs.text_embed, inputs.text_mask, lowres=images, steps=bench.cascade_steps,
                                  guidance_scale=bench.cascade_cfg_scale, **options)
        return images

    flops = {}
    for contestant in contestants:
        _describe(report, contestant)
        if upper is not None:
            report(f"{contestant.key}.cascade_params", sum(p.numel() for p in upper.unet.parameters()))
        total = count_flops(lambda: sample_once(contestant))
        flops[contestant.key] = {"sample_flops_per_image": total / batch}
        _flops_line(report, contestant.key, "sample_flops_per_image", total, batch)
    seconds, peaks = _timed_rounds(contestants, sample_once, bench, device)
    _throughput(report, contestants, seconds, peaks, "sample_flops_per_image", flops, batch, bench, device, ceiling,
                "call")


def run_flops(report: Report, cfg: DictConfig, bench: BenchConfig):
    """FLOPs per image of a forward pass and of a training step at the config's full size, on the meta device
    (no weights allocated, nothing timed)."""
    typed, _ = validate_model_config(cfg.model)
    device = torch.device("meta")
    batch = typed.micro_batch_size
    report("config", cfg.get("name", "?"))
    report("mode", bench.mode)
    report("device", "meta", "shapes only: counts, no timing")
    report("torch", torch.__version__)
    report("micro_batch", batch)
    precond = build_preconditioning(typed.preconditioning_type, typed.preconditioning)
    # The stable attention path switches autocast off, which the meta device does not support; the plain path
    # runs the same matrix products, so it counts the same FLOPs.
    unet_cfg = dataclasses.replace(typed.unet, stable_attention=False)
    with torch.device("meta"):
        ours = build_unet(typed.unet_type, unet_cfg, typed.conditioning.embed_dim, typed.noise_cond_aug)
    contestants = [Contestant("ours", f"nemo_imagen UNet ({typed.unet_type})", ours, ours)]
    if bench.compare == "diffusers":
        with torch.device("meta"):
            peer, _, description = build_diffusers_peer(typed, contestants[0].params)
        contestants.append(Contestant("peer", description, peer, peer))
    inputs = synthetic_inputs(typed, batch, "cpu", bench.seed, False)
    inputs = Inputs(*(None if t is None else torch.empty_like(t, device=device) for t in vars(inputs).values()))
    flops = {}
    for contestant in contestants:
        _describe(report, contestant)
        flops[contestant.key] = _train_flops(typed, precond, contestant.module, inputs, None, torch.device("cpu"))
        for name, per_image in flops[contestant.key].items():
            _flops_line(report, contestant.key, name, per_image * batch, batch)
    if len(contestants) == 2:
        for name in flops["ours"]:
            report(f"ratio.{name}", flops["ours"][name] / flops["peer"][name], "ours / peer")
        report("ratio.params", contestants[0].params / contestants[1].params, "ours / peer")


def run_benchmark(cfg: DictConfig, bench: BenchConfig, cascade_cfg: Optional[DictConfig] = None,
                  write: Callable[[str], None] = print) -> Dict[str, object]:
    """Runs `bench.mode` on the training config `cfg` (with `model`, optionally `trainer`); `cascade_cfg` is the
    config named by `bench.cascade` (mode=sample). Prints and returns the reported values."""
    report = Report(write)
    if bench.mode == "sample":
        run_sample(report, cfg, bench, cascade_cfg)
    else:
        {"train": run_train, "flops": run_flops}[bench.mode](report, cfg, bench)
    if bench.mode != "flops" and resolve_device(bench.device).type == "cpu":
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
        report("process_max_rss_gib", rss, "whole process, both models")
    return report.values
