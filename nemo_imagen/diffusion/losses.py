"""Per-sample reductions of a (weighted) prediction residual, shared by both preconditionings."""
import torch
import torch.nn.functional as F


def per_sample_loss(residual: torch.Tensor, loss_type: str) -> torch.Tensor:
    """Reduce a residual r = prediction - target to one loss value per sample.

    residual: [B, ...] (any weighting already applied). Returns [B], in float32 at least (half
    precision residuals are upcast before squaring):
      l2:    mean(r^2)
      l1:    mean(|r|)
      huber: mean(huber(r)) with the quadratic zone |r| < 1 (`smooth_l1` with beta = 1):
             0.5 r^2 for |r| < 1, |r| - 0.5 otherwise.
    """
    r = residual.flatten(1).to(torch.promote_types(residual.dtype, torch.float32))
    if loss_type == "l2":
        elementwise = r.square()
    elif loss_type == "l1":
        elementwise = r.abs()
    elif loss_type == "huber":
        elementwise = F.smooth_l1_loss(r, torch.zeros_like(r), reduction="none", beta=1.0)
    else:
        raise ValueError(f"loss_type: {loss_type!r} is not one of l1, l2, huber")
    return elementwise.mean(dim=1)
