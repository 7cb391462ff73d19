"""Small tensor helpers shared by the diffusion modules."""
import torch


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """Reshape a per-sample vector v: [B] to [B, 1, ..., 1] with `ndim` dimensions in all."""
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))
