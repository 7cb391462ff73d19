"""`precision: auto`: bf16 autocast where the hardware computes bf16 natively, float32 elsewhere.

bf16 autocast is 2-3x faster than float32 on a CPU with AMX-BF16 or AVX512-BF16 (and on a GPU with bf16),
but on any other CPU oneDNN emulates it and a training step becomes many times slower than in float32
(measured on 2 Xeon cores, a conv/linear forward+backward: 0.4x the float32 time natively, 17x under
`ONEDNN_MAX_CPU_ISA=AVX2`, 2.8x under `ONEDNN_MAX_CPU_ISA=AVX512_CORE`). Plain torch: no NeMo, no Lightning.
"""
import os
from typing import Any, Tuple

import torch

AUTO = "auto"

# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA / DNNL_MAX_CPU_ISA) that still allow native bf16 instructions
# (avx512_core_bf16 and above); a cap below them makes oneDNN emulate bf16 even on an AMX machine.
_BF16_ISA_CAPS = ("ALL", "DEFAULT", "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX10_1_512", "AVX512_CORE_AMX",
                  "AVX10_1_512_AMX", "AVX512_CORE_AMX_FP16", "AVX10_1_512_AMX_FP16")


def is_auto(precision: Any) -> bool:
    return str(precision).strip().lower() == AUTO


def accelerator_device_type(accelerator: Any) -> str:
    """Lightning's `trainer.accelerator` -> the torch device type its training runs on (cuda or cpu)."""
    name = str(accelerator or AUTO).lower()
    if name in ("gpu", "cuda"):
        return "cuda"
    if name == AUTO:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def cpu_bf16_support() -> Tuple[bool, str]:
    """(native, facts): whether this process's CPU kernels compute bf16 natively, and the facts behind it.

    Three things torch exposes, all needed:
    - the hardware's instructions, from cpuinfo (`torch.cpu.get_capabilities()`): AMX-BF16 or AVX512-BF16
      (x86), BF16 (ARM);
    - oneDNN, which runs bf16 matmuls and convolutions, may use bf16 at all
      (`torch.ops.mkldnn._is_mkldnn_bf16_supported()`; False when it is capped below AVX-512, e.g. by
      `ONEDNN_MAX_CPU_ISA=AVX2`);
    - oneDNN is not capped below avx512_core_bf16. torch exposes oneDNN's effective ISA nowhere (the check above
      is also True on plain AVX-512, where oneDNN emulates bf16), so the cap is read from the variable oneDNN
      itself reads.
    ATen's vector ISA (`torch.backends.cpu.get_cpu_capability()`) is only reported: capping it to AVX2 leaves
    bf16 autocast as fast as without the cap (the time is in oneDNN's kernels).
    """
    capabilities = dict(torch.cpu.get_capabilities()) if hasattr(torch.cpu, "get_capabilities") else {}
    named = {"AMX-BF16": "amx_bf16", "AVX512-BF16": "avx512_bf16", "BF16": "bf16", "SVE-BF16": "sve_bf16"}
    hardware = [label for label, key in named.items() if capabilities.get(key)]
    if not capabilities:
        # torch before 2.6 has no get_capabilities: fall back to its AVX512-BF16 / AMX probes (x86 only)
        probes = {"AVX512-BF16": "_is_avx512_bf16_supported", "AMX-BF16": "_is_amx_tile_supported"}
        hardware = [label for label, probe in probes.items() if getattr(torch.cpu, probe, lambda: False)()]
    try:
        onednn = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        onednn = False
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").strip().upper()
    capped = bool(cap) and cap not in _BF16_ISA_CAPS
    aten = torch.backends.cpu.get_cpu_capability()
    source = "ONEDNN_MAX_CPU_ISA" if os.environ.get("ONEDNN_MAX_CPU_ISA") else "DNNL_MAX_CPU_ISA"
    kernels = "bf16" if onednn and not capped else "emulated bf16" if onednn else "no bf16 kernels"
    facts = [
        "hardware " + (", ".join(hardware) if hardware else "without AMX-BF16/AVX512-BF16"),
        "oneDNN " + (f"capped at {cap} by {source}, " if cap else "") + kernels,
        f"ATen {aten}",
    ]
    return bool(hardware) and onednn and not capped, "; ".join(facts)


def choose_precision(requested: Any, device_type: str) -> Tuple[Any, str]:
    """-> (precision, reason). `auto`: "bf16-mixed" on a CUDA device with bf16 and on a CPU that computes bf16
    natively (`cpu_bf16_support`), else "32". Any other value is returned unchanged, never overridden.
    `reason` is one sentence for the log."""
    if not is_auto(requested):
        return requested, f"precision {requested}: as configured"
    device_type = str(device_type).split(":")[0]
    if device_type == "cuda":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return "bf16-mixed", f"precision auto -> bf16-mixed: the CUDA device {torch.cuda.get_device_name()} supports bf16"
        return "32", "precision auto -> 32: this CUDA device has no bf16 (float16 would need loss scaling)"
    if device_type == "cpu":
        native, facts = cpu_bf16_support()
        if native:
            return "bf16-mixed", f"precision auto -> bf16-mixed: this CPU computes bf16 natively ({facts})"
        return "32", (f"precision auto -> 32: this CPU does not compute bf16 natively ({facts}); bf16 autocast "
                      "would be emulated and many times slower than float32")
    return "32", f"precision auto -> 32: no bf16 rule for device type {device_type!r}"
