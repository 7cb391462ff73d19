"""Numerical guard: an optimizer step whose loss or gradients are not finite is skipped.

Skipping means the optimizer sees no gradients at all (every ``param.grad`` is set to None before
``optimizer.step``): AdamW then leaves the weights, its moments and its step count untouched, and the
model skips the EMA update. The learning-rate schedule and the global step still advance, so a skipped
step costs one step of the schedule, like a loss-scaler skip in fp16 training. After
``max_consecutive`` skipped steps in a row the run stops with ``NonFiniteStepError``.
"""
from typing import Iterable, Optional

import torch
import torch.distributed as dist


class NonFiniteStepError(RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss or gradient."""


def all_finite(loss_finite: torch.Tensor, parameters: Iterable[torch.nn.Parameter]) -> bool:
    """True if ``loss_finite`` (a bool tensor) holds and every gradient is finite (one host sync).

    Under data parallelism the gradients are already all-reduced, and the verdict is all-reduced too, so
    every rank takes the same decision."""
    grads = [param.grad for param in parameters if param.grad is not None]
    verdict = loss_finite.to(torch.float32).reshape(1)
    if grads:
        # a non-finite entry makes its tensor's norm non-finite; one fused kernel per dtype/device group
        norms = torch.stack([norm.to(verdict.device, torch.float32) for norm in torch._foreach_norm(grads)])
        verdict = verdict * torch.isfinite(norms).all()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(verdict, op=dist.ReduceOp.MIN)
    return bool(verdict.item() > 0)


class NonFiniteGuard:
    """Counts skipped steps; raises once ``max_consecutive`` (> 0) steps in a row were skipped."""

    def __init__(self, max_consecutive: int):
        self.max_consecutive = max_consecutive
        self.skipped_total = 0
        self.consecutive = 0

    def record(self, finite: bool, step: int, last_checkpoint: Optional[str]) -> None:
        if finite:
            self.consecutive = 0
            return
        self.skipped_total += 1
        self.consecutive += 1
        if self.max_consecutive > 0 and self.consecutive >= self.max_consecutive:
            raise NonFiniteStepError(
                f"step {step}: the loss or the gradients were NaN/inf in {self.consecutive} optimizer steps in a "
                f"row (model.reliability.max_consecutive_nonfinite_steps = {self.max_consecutive}); stopping. "
                f"Last good checkpoint: {last_checkpoint or 'none written yet'}. Lower the learning rate, check "
                "the data, or use trainer.precision=bf16-mixed with unet.stable_attention=True"
            )

    def state_dict(self):
        return {"skipped_total": self.skipped_total, "consecutive": self.consecutive}

    def load_state_dict(self, state):
        self.skipped_total = int(state["skipped_total"])
        self.consecutive = int(state["consecutive"])
