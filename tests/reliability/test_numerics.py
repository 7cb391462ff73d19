"""Numerical guard: injected NaN losses and NaN gradients skip the step (no weight, EMA or Adam update), are
counted, and too many in a row stop the run naming the step and the last good checkpoint. Also: attention and
GroupNorm stay finite in bf16 autocast on large-magnitude inputs with stable attention."""
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from megatron.core import parallel_state
from omegaconf import OmegaConf

from nemo_imagen.models.imagen import MegatronImagen
from nemo_imagen.diffusion.numerics import NonFiniteStepError
from nemo_imagen.models.trainer_builder import build_trainer
from nemo_imagen.modules.attention import FusedAttentionBlock, SelfAttentionBlock, attention
from tests.tiny import REPO, tiny_overrides

NAN_LOSS_STEPS = {2, 7, 8, 9}  # optimizer steps (0-based) whose second micro batch has a NaN loss
NAN_GRAD_STEPS = {4}  # optimizer steps whose first micro batch has a finite loss but NaN gradients
MAX_CONSECUTIVE = 3


class WeightRecorder(Callback):
    """Weights, EMA weights and Adam step count after every optimizer step, keyed by global step."""

    def __init__(self):
        self.after = {}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step not in self.after:
            optimizer = trainer.optimizers[0]
            adam_steps = {int(state["step"]) for state in optimizer.state.values()} or {0}
            self.after[step] = (
                [p.detach().clone() for p in module.unet.parameters()],
                [p.detach().clone() for p in module.ema_unet.parameters()],
                adam_steps,
            )


def inject_faults(model):
    """Wraps the preconditioning loss: micro batch i belongs to optimizer step i // 2 (accumulation 2)."""
    loss_fn, calls = model.precond.loss, []

    def faulty_loss(net, images, **kwargs):
        index = len(calls)
        calls.append(index)
        loss = loss_fn(net, images, **kwargs)
        step, micro = divmod(index, 2)
        if step in NAN_LOSS_STEPS and micro == 1:
            return loss * float("nan")
        if step in NAN_GRAD_STEPS and micro == 0:
            zero = sum((p - p).sum() for p in model.unet.parameters())  # 0, whose sqrt has an infinite slope
            return loss + 0.0 * torch.sqrt(zero)
        return loss

    model.precond.loss = faulty_loss


@pytest.mark.slow
def test_nonfinite_steps_are_skipped_counted_and_stop_the_run(tmp_path):
    cfg = OmegaConf.load(REPO / "examples/conf/base64-500m-edm.yaml")
    cfg.merge_with_dotlist(tiny_overrides(tmp_path, max_steps=20, extra=[
        "model.sample_log.every_n_steps=0",
        "exp_manager.checkpoint_callback_params.every_n_train_steps=1",
        f"model.reliability.max_consecutive_nonfinite_steps={MAX_CONSECUTIVE}",
        "model.ema.decay=0.5",
    ]))
    trainer = build_trainer(cfg)
    recorder = WeightRecorder()
    trainer.callbacks.insert(0, recorder)
    model = MegatronImagen(cfg.model, trainer)
    inject_faults(model)
    try:
        with pytest.raises(NonFiniteStepError) as raised:
            trainer.fit(model)
    finally:
        if parallel_state.model_parallel_is_initialized():
            model.teardown("fit")

    skipped = sorted(NAN_LOSS_STEPS | NAN_GRAD_STEPS)
    assert model._guard.skipped_total == len(skipped) == 5
    message = str(raised.value)
    assert message.startswith("step 9:") and f"in {MAX_CONSECUTIVE} optimizer steps in a row" in message
    last_good = message.split("Last good checkpoint: ")[1].split(". ")[0]
    assert Path(last_good).is_file() and "step=9" in last_good  # written after step 8, the last completed one

    for step in range(9):  # global step s+1 is after optimizer step s
        before, after = recorder.after[step], recorder.after[step + 1]
        same = [torch.equal(a, b) for a, b in zip(before[0] + before[1], after[0] + after[1])]
        if step in skipped:
            assert all(same), f"step {step} was skipped but changed weights"
            assert after[2] == before[2], "a skipped step advanced Adam"
        else:
            assert not all(same), f"step {step} did not train"
            assert after[2] == {s + 1 for s in before[2]}
        assert all(torch.isfinite(p).all() for p in after[0] + after[1])
    assert recorder.after[9][2] == {9 - 4}  # Adam stepped for the 5 finite steps among 0..8


@pytest.mark.parametrize("block", ["attention", "self", "fused"])
def test_stable_attention_and_groupnorm_stay_finite_in_bf16_on_huge_inputs(block):
    torch.manual_seed(0)
    scale = 3e4  # activations far outside the usual range: fp16 would overflow at 65504
    if block == "attention":
        q, k, v = (torch.randn(2, 2, 64, 32).bfloat16() * scale for _ in range(3))
        # the float32 computation on the same bf16 inputs: scores and softmax are exactly those of stable mode
        reference = attention(q.float(), k.float(), v.float(), mode="stable")
        with torch.autocast("cpu", torch.bfloat16):
            out = attention(q, k, v, mode="stable")
        assert torch.isfinite(out).all()
        # bf16 keeps 8 bits of mantissa: the output differs by the rounding of the weights and of weights @ v
        assert (out.float() - reference).abs().max() / scale < 0.05
        return
    module = SelfAttentionBlock(64, 4, mode="stable") if block == "self" else FusedAttentionBlock(64, 32, 4, mode="stable")
    torch.nn.init.normal_(module.proj_out.weight, std=0.1)  # zero-initialised: would pass x through unchanged
    x = torch.randn(2, 64, 8, 8) * scale
    context, mask = torch.randn(2, 5, 32) * scale, torch.ones(2, 5, dtype=torch.bool)
    reference = module.double()(x.double(), context.double(), mask)
    module.float()
    with torch.autocast("cpu", torch.bfloat16):
        out = module(x, context, mask)
    assert torch.isfinite(out).all()
    attended = reference - x.double()  # the attention branch, compared without the residual
    assert ((out.double() - x.double() - attended).abs().max() / attended.abs().max()) < 0.05
