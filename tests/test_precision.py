"""`precision: auto`: the decision (with the CPU probe faked), its log line, the trainer it builds, and sampling
that picks its autocast on the machine where it runs, whatever precision the checkpoint was trained with."""
import logging
import os
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from nemo_imagen import precision as precision_module
from nemo_imagen.precision import accelerator_device_type, choose_precision
from tests.tiny import REPO, TINY_CONDITIONING, TINY_UNET, tiny_overrides

NATIVE = (True, "hardware AMX-BF16, AVX512-BF16; oneDNN bf16; ATen AVX512")
AVX2 = (False, "hardware without AMX-BF16/AVX512-BF16; oneDNN no bf16 kernels; ATen AVX2")


@pytest.fixture
def cpu(monkeypatch):
    """cpu(NATIVE) / cpu(AVX2): the CPU probe answers as that machine would."""
    return lambda answer: monkeypatch.setattr(precision_module, "cpu_bf16_support", lambda: answer)


@pytest.fixture
def cuda(monkeypatch):
    def fake(bf16: bool):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "Fake GPU")

    return fake


def test_auto_on_a_cpu_with_native_bf16_is_bf16_mixed(cpu):
    cpu(NATIVE)
    chosen, reason = choose_precision("auto", "cpu")
    assert chosen == "bf16-mixed"
    assert reason.startswith("precision auto -> bf16-mixed") and "AMX-BF16" in reason and "\n" not in reason


def test_auto_on_an_avx2_cpu_is_float32_and_says_why(cpu):
    cpu(AVX2)
    chosen, reason = choose_precision("auto", "cpu")
    assert chosen == "32"
    assert reason.startswith("precision auto -> 32") and "ATen AVX2" in reason and "emulated" in reason


@pytest.mark.parametrize("bf16, expected", [(True, "bf16-mixed"), (False, "32")])
def test_auto_on_cuda_follows_the_device_bf16_support(cuda, cpu, bf16, expected):
    cuda(bf16)
    cpu(AVX2 if bf16 else NATIVE)  # the CPU's answer must not matter for a CUDA device
    chosen, reason = choose_precision("auto", "cuda")
    assert chosen == expected and reason.startswith(f"precision auto -> {expected}")
    assert choose_precision("auto", "cuda:1")[0] == expected


@pytest.mark.parametrize("requested", [32, "32", "32-true", "bf16-mixed", "bf16", "bf16-true", 16, "16-mixed", "64"])
@pytest.mark.parametrize("device_type", ["cpu", "cuda"])
@pytest.mark.parametrize("native", [True, False])
def test_an_explicit_precision_is_never_overridden(cpu, cuda, requested, device_type, native):
    cpu(NATIVE if native else AVX2)
    cuda(native)
    chosen, reason = choose_precision(requested, device_type)
    assert chosen == requested and type(chosen) is type(requested)
    assert reason == f"precision {requested}: as configured"


def test_an_unknown_device_type_gets_float32(cpu):
    cpu(NATIVE)
    assert choose_precision("auto", "mps")[0] == "32"


def test_accelerator_names_map_to_device_types(monkeypatch):
    assert accelerator_device_type("cpu") == "cpu"
    assert accelerator_device_type("gpu") == accelerator_device_type("cuda") == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert accelerator_device_type("auto") == accelerator_device_type(None) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert accelerator_device_type("auto") == "cuda"


def real_probe(**env):
    """The real probe's choice in a fresh interpreter with `env` (oneDNN and ATen read their caps at start-up)."""
    code = ("from nemo_imagen.precision import choose_precision, cpu_bf16_support; "
            "print(choose_precision('auto', 'cpu')[0]); print(cpu_bf16_support()[1])")
    clean = {key: value for key, value in os.environ.items()
             if key not in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**clean, "PYTHONPATH": str(REPO), **env}, check=True)
    return result.stdout.split("\n")[:2]


def test_the_real_probe_says_32_on_an_emulated_avx2_cpu():
    chosen, facts = real_probe(ONEDNN_MAX_CPU_ISA="AVX2", ATEN_CPU_CAPABILITY="avx2")
    assert chosen == "32", facts
    assert "ATen AVX2" in facts and "capped at AVX2" in facts


def test_the_real_probe_says_32_when_onednn_may_only_emulate_bf16():
    """oneDNN's bf16 check is also True on plain AVX-512 (avx512_core), where it emulates bf16."""
    chosen, facts = real_probe(ONEDNN_MAX_CPU_ISA="AVX512_CORE")
    assert chosen == "32", facts


def test_the_real_probe_follows_the_hardware_when_uncapped():
    capabilities = torch.cpu.get_capabilities()
    native = bool(capabilities.get("amx_bf16") or capabilities.get("avx512_bf16")) and bool(
        torch.ops.mkldnn._is_mkldnn_bf16_supported())
    chosen, facts = real_probe()
    assert chosen == ("bf16-mixed" if native else "32"), facts


# ---- training: build_trainer resolves trainer.precision before the Trainer exists ----
class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def nemo_log():
    """The messages of NeMo's logger (`nemo_logger`, which does not propagate to the root logger)."""
    handler, logger = Records(), logging.getLogger("nemo_logger")
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)


@pytest.mark.parametrize("answer, chosen, lightning", [(NATIVE, "bf16-mixed", "bf16-mixed"), (AVX2, "32", "32-true")])
def test_build_trainer_resolves_auto_and_the_model_follows(cpu, nemo_log, tmp_path, answer, chosen, lightning):
    from nemo_imagen.models.config import validate_model_config
    from nemo_imagen.models.trainer_builder import build_trainer

    cpu(answer)
    cfg = OmegaConf.load(REPO / "examples/conf/quickstart.yaml")
    assert cfg.trainer.precision == "auto" and OmegaConf.to_container(cfg.model)["precision"] == "${trainer.precision}"
    cfg.merge_with_dotlist(tiny_overrides(tmp_path, 1, ["trainer.precision=auto", "trainer.enable_progress_bar=False"]))
    trainer = build_trainer(cfg)
    assert trainer.precision == lightning
    assert cfg.trainer.precision == chosen and cfg.model.precision == chosen
    assert validate_model_config(cfg.model)[0].precision == chosen
    lines = [message for message in nemo_log if message.startswith("precision auto")]
    assert lines == [choose_precision("auto", "cpu")[1]]


def test_build_trainer_keeps_an_explicit_precision(cpu, nemo_log, tmp_path):
    from nemo_imagen.models.trainer_builder import build_trainer

    cpu(AVX2)
    cfg = OmegaConf.load(REPO / "examples/conf/quickstart.yaml")
    cfg.merge_with_dotlist(tiny_overrides(tmp_path, 1, ["trainer.precision=bf16-mixed"]))
    assert build_trainer(cfg).precision == "bf16-mixed" and cfg.model.precision == "bf16-mixed"
    assert "precision bf16-mixed: as configured" in nemo_log


def test_every_training_config_defaults_to_auto():
    configs = [path for path in sorted((REPO / "examples/conf").glob("*.yaml"))
               if "precision" in (OmegaConf.load(path).get("trainer") or {})]
    assert len(configs) >= 12
    for path in configs:
        assert OmegaConf.load(path).trainer.precision == "auto", path.name


# ---- sampling: the autocast is decided where it runs ----
def tiny_model(precision):
    from nemo_imagen.models.imagen import MegatronImagen

    cfg = OmegaConf.load(REPO / "examples/conf/base64-500m-edm.yaml").model
    cfg.precision = precision  # what the checkpoint was trained with
    cfg.unet = OmegaConf.merge(cfg.unet, TINY_UNET)
    cfg.conditioning = OmegaConf.merge(cfg.conditioning, TINY_CONDITIONING)
    cfg.conditioning.encoder_path = None
    cfg.data.synthetic_data = True
    return MegatronImagen(cfg).eval()


@pytest.fixture(scope="module")
def model():
    return tiny_model("bf16-mixed")


def autocast_seen(model, **sample_kwargs):
    """{(autocast on, its dtype)} seen inside the UNet during one sampling call."""
    seen = set()

    def hook(module, args):
        seen.add((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))

    cond = model.typed_cfg.conditioning
    text, mask = torch.randn(1, cond.token_length, cond.embed_dim), torch.ones(1, cond.token_length, dtype=torch.bool)
    handles = [net.register_forward_pre_hook(hook) for net in (model.unet, model.ema_unet) if net is not None]
    try:
        model.sample(text, mask, sampler="dpmpp", steps=1, guidance_scale=1.0, **sample_kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return {(on, dtype if on else None) for on, dtype in seen}


def test_a_bf16_checkpoint_samples_in_float32_on_an_avx2_cpu(model, cpu):
    cpu(AVX2)
    assert autocast_seen(model) == {(False, None)}


def test_a_float32_checkpoint_samples_in_bf16_on_a_native_bf16_cpu(cpu):
    cpu(NATIVE)
    assert autocast_seen(tiny_model(32)) == {(True, torch.bfloat16)}


@pytest.mark.parametrize("answer", [NATIVE, AVX2])
def test_an_explicit_sampling_precision_is_honoured(model, cpu, answer):
    cpu(answer)
    assert autocast_seen(model, precision="bf16-mixed") == {(True, torch.bfloat16)}
    assert autocast_seen(model, precision=32) == {(False, None)}
    assert autocast_seen(model, precision="32-true") == {(False, None)}


def test_the_training_sample_grid_uses_the_trainers_precision(model, cpu, monkeypatch):
    from types import SimpleNamespace

    from nemo_imagen.models.sample_grid import fixed_prompt_grid

    cond = model.typed_cfg.conditioning
    model.first_batch_text = (["x"], torch.randn(1, cond.token_length, cond.embed_dim),
                              torch.ones(1, cond.token_length, dtype=torch.bool), None)
    monkeypatch.setattr(model.typed_cfg.sample_log, "steps", 1)
    monkeypatch.setattr(model.typed_cfg.sample_log, "images_per_prompt", 1)
    seen = []
    sample = model.sample
    monkeypatch.setattr(model, "sample", lambda *args, **kwargs: seen.append(kwargs["precision"]) or sample(*args, **kwargs))
    cpu(NATIVE)
    monkeypatch.setattr(model, "_trainer", SimpleNamespace(precision="32-true"))
    fixed_prompt_grid(model)
    monkeypatch.setattr(model, "_trainer", None)
    fixed_prompt_grid(model)
    assert seen == ["32-true", "auto"]


@pytest.mark.parametrize("requested, answer, expected", [("auto", AVX2, "32"), ("auto", NATIVE, "bf16-mixed"),
                                                         ("bf16-mixed", AVX2, "bf16-mixed"), (32, NATIVE, 32)])
def test_the_pipeline_decides_once_for_its_device_and_passes_it_on(model, cpu, monkeypatch, requested, answer, expected):
    from nemo_imagen.models.pipeline import ImagenPipeline, StageSampling

    cpu(answer)
    pipeline = ImagenPipeline([model], precision=requested)
    assert pipeline.precision == expected and pipeline.precision_reason == choose_precision(requested, "cpu")[1]
    cond = model.typed_cfg.conditioning
    monkeypatch.setattr(pipeline, "embed_prompts", lambda prompts: [
        (torch.randn(len(prompts), cond.token_length, cond.embed_dim), torch.ones(len(prompts), cond.token_length, dtype=torch.bool))])
    seen = []
    sample = model.sample
    monkeypatch.setattr(model, "sample", lambda *args, **kwargs: seen.append(kwargs["precision"]) or sample(*args, **kwargs))
    pipeline(["x"], [StageSampling("dpmpp", 1, 1.0)], progress=False)
    assert seen == [expected]
