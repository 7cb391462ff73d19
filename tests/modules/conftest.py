"""Shared helpers for the UNet tests: a tiny config and a parameter perturbation.

Zero-initialised output layers make a fresh UNet (and every attention block) an exact identity or
zero map, which would let most numerical checks pass vacuously; `perturb` makes every parameter
non-trivial first.
"""

import pytest
import torch

from nemo_imagen.modules import UNetConfig

TEXT_DIM = 24


def tiny_config(**overrides) -> UNetConfig:
    """Two levels (16x16 and 8x8), 32 and 64 channels, attention at 8x8 and in the middle."""
    values = dict(
        embed_dim=32,
        image_size=16,
        channel_mult=[1, 2],
        num_res_blocks=1,
        attention_resolutions=[8],
        per_head_channels=16,
        cond_dim=32,
    )
    values.update(overrides)
    return UNetConfig(**values)


def perturb(module: torch.nn.Module, seed: int = 0, std: float = 0.1) -> torch.nn.Module:
    """Add N(0, std^2) noise to every parameter, in place; returns the module."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(std * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return module


@pytest.fixture(autouse=True)
def single_thread():
    """Run these tiny-tensor tests on one intra-op thread: on a shared 2-core machine OpenMP threads
    spin against other processes and a training step gets ~10x slower, with nothing gained at this size."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(name="tiny_config")
def tiny_config_fixture():
    return tiny_config


@pytest.fixture(name="perturb")
def perturb_fixture():
    return perturb


@pytest.fixture(name="text_dim")
def text_dim_fixture():
    return TEXT_DIM
