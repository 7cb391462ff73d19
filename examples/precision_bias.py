"""How far bf16 autocast moves a trained stage's training gradient from the exact one, and whether the error is
noise (it averages out over steps) or a bias (the same direction at every step, so it accumulates):

    python examples/precision_bias.py RUN.nemo [--data demo|scenes] [--batches 4] [--batch-size 32]

For a few batches of the demo (or scenes) data, with the training loss's noise levels, the gradient of the
training loss of the checkpoint's trained (not EMA) UNet is computed in float64 (the reference) and under bf16
autocast, once with every level under autocast (`unet.float32_resolutions: []`) and once with the image-size
level in float32 (`[image_size]`). Printed per variant: the error's norm against the gradient's (`error/grad`), the mean cosine between
the errors of different batches (`error cos`: near 0 for noise, near 1 for a bias; the exact gradients of
different batches are themselves nearly orthogonal) and the norm of the error of the batches' summed gradient
against that sum (`summed error/grad`). CPU only; a batch takes seconds at the quickstart's size."""
import argparse
import copy
import dataclasses
import sys
from pathlib import Path

from nemo_imagen.models.pipeline import load_stage  # first: it sets the OpenMP spin before torch loads

import numpy as np
import torch

from nemo_imagen.data.demo import demo_sample, render
from nemo_imagen.data.scenes import render_scene, scene_sample
from nemo_imagen.data.transforms import to_tensor
from nemo_imagen.diffusion.training import TrainingDraws, diffusion_loss
from nemo_imagen.models.cli import exit_on_config_error, fail
from nemo_imagen.modules import build_unet

DATASETS = {"demo": (demo_sample, render), "scenes": (scene_sample, render_scene)}


def training_batches(model, data: str, count: int, size: int, seed: int = 0):
    """`count` batches of `size` training images in [-1, 1] with their text and the training loss's draws."""
    sample, draw = DATASETS[data]
    batches = []
    for k in range(count):
        samples = [sample(0, "train", k * size + i) for i in range(size)]
        images = torch.stack([to_tensor(draw(s)) for s in samples])
        with torch.no_grad():
            text, mask = model.encode_prompts([s.caption for s in samples])
        generator = torch.Generator().manual_seed(seed + k)
        draws = TrainingDraws(
            model.precond.sample_training_sigma(size, generator=generator),
            torch.zeros(size, dtype=torch.bool),
            torch.randn(images.shape, generator=generator),
        )
        batches.append((images, text, mask, draws))
    return batches


def gradient(precond, unet, batch, dtype, autocast_dtype=None):
    """The training loss's gradient, one flat float64 vector, with the inputs in `dtype` under an optional autocast."""
    images, text, mask, draws = batch
    draws = TrainingDraws(draws.sigma.to(dtype), draws.drop_text, draws.noise.to(dtype))
    unet.zero_grad(set_to_none=True)
    with torch.autocast("cpu", autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        loss = diffusion_loss(precond, unet, images.to(dtype), text.to(dtype), mask, draws)
    loss.backward()
    return torch.cat([p.grad.flatten().double() for p in unet.parameters()])


def mean_pairwise_cosine(vectors) -> float:
    """The mean cosine similarity over every pair of `vectors`."""
    pairs = [(i, j) for i in range(len(vectors)) for j in range(i + 1, len(vectors))]
    return float(np.mean([torch.nn.functional.cosine_similarity(vectors[i], vectors[j], dim=0).item() for i, j in pairs]))


def error_figures(errors, exact):
    """(error/grad, error cos, summed error/grad) of the per-batch errors against the exact gradients."""
    ratio = np.mean([(e.norm() / g.norm()).item() for e, g in zip(errors, exact)])
    summed = (sum(errors).norm() / sum(exact).norm()).item()
    return ratio, mean_pairwise_cosine(errors), summed


@exit_on_config_error
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data", choices=sorted(DATASETS), default="demo")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    if args.batches < 2 or args.batch_size < 1:
        fail("--batches must be at least 2 (the error cosine compares batches), --batch-size at least 1")
    model = load_stage(str(args.checkpoint), torch.device("cpu"), key="checkpoint")  # a bad path: one line, exit 2
    typed = model.typed_cfg
    if not hasattr(typed.unet, "float32_resolutions"):
        fail(f"unet_type {typed.unet_type!r} has no float32_resolutions (the regular UNet's key)")
    batches = training_batches(model, args.data, args.batches, args.batch_size)
    reference = copy.deepcopy(model.unet).double()
    exact = [gradient(model.precond, reference, batch, torch.float64) for batch in batches]
    print(f"{args.checkpoint}: {args.batches} batches of {args.batch_size} {args.data} images, bf16 autocast "
          f"against float64, torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"exact gradients of different batches: mean cosine {mean_pairwise_cosine(exact):.3f}")
    print(f"{'float32_resolutions':>20s}  error/grad  error cos  summed error/grad")
    for kept in ([], [typed.unet.image_size]):
        cfg = dataclasses.replace(typed.unet, float32_resolutions=kept)
        unet = build_unet(typed.unet_type, cfg, typed.conditioning.embed_dim, typed.noise_cond_aug)
        unet.load_state_dict(model.unet.state_dict())
        errors = [
            gradient(model.precond, unet, batch, torch.float32, torch.bfloat16) - g for batch, g in zip(batches, exact)
        ]
        ratio, cos, summed = error_figures(errors, exact)
        print(f"{str(kept):>20s}  {ratio:10.3f}  {cos:9.3f}  {summed:16.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
