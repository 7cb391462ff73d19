"""How much a super-resolution stage adds over bicubic upsampling, on held-out shards.

    python examples/evaluate_sr.py --ckpt sr256.nemo --shards 'demo_data_256/val-000000.tar' --num_images 64

Each held-out image is resized and centre-cropped to the stage's output size, downsampled (bicubic, as in
training) to its low-res input, then upscaled twice: by the stage (text from the image's caption) and by bicubic
interpolation. Prints the PSNR of both against the true image, over the same images.
"""
import argparse
import math
import sys

import torch
import torch.nn.functional as F

from nemo_imagen.data.samples import decode_image
from nemo_imagen.data.shards import expand_shard_paths, iter_shard
from nemo_imagen.data.transforms import bicubic_pyramid, center_crop, resize_smallest_side, to_tensor
from nemo_imagen.diffusion import THRESHOLDS
from nemo_imagen.models.config import ConfigError
from nemo_imagen.models.pipeline import load_stage
from nemo_imagen.precision import choose_precision
from nemo_imagen.text.encoders import TextEncoder


def psnr(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [-1, 1] against reference, on the [0, 1] scale: [B]."""
    mse = ((images.clamp(-1, 1) - reference) / 2).square().flatten(1).mean(dim=1)
    return 10 * torch.log10(1.0 / mse.clamp(min=1e-12))


def held_out_pairs(shards, low: int, high: int, limit: int):
    """Yields (caption, low-res [C, low, low], high-res [C, high, high]) from the shards' jpg/txt samples."""
    count = 0
    for path in expand_shard_paths(shards, "--shards"):
        for _, entries in iter_shard(path):
            if "jpg" not in entries or "txt" not in entries:
                continue
            image = center_crop(resize_smallest_side(decode_image(entries["jpg"]), high), high, high)
            pyramid = bicubic_pyramid(image, [low, high])
            yield entries["txt"].decode("utf-8"), to_tensor(pyramid[low]), to_tensor(pyramid[high])
            count += 1
            if count == limit:
                return


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="the SR stage: .nemo or .ckpt from examples/train.py")
    parser.add_argument("--shards", required=True, nargs="+", help="held-out webdataset shards with jpg and txt")
    parser.add_argument("--num_images", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--sampler", default="edm")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=1.0, help="guidance scale (1 = conditional model alone)")
    parser.add_argument(
        "--thresholding", default="static", choices=THRESHOLDS,
        help="x0 thresholding while sampling; static (clamp to [-1, 1]) by default: dynamic thresholding, made for "
        "strong guidance, rescales images whose 99.5th-percentile |x0| exceeds 1, darkening the demo's white backgrounds",
    )
    parser.add_argument("--noise_cond_aug_sigma", type=float, default=None)
    parser.add_argument("--encoder_path", default=None, help="text encoder override")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--precision", default="auto",
        help="sampling's autocast: auto (bf16 where this machine computes bf16 natively, else 32) or a Lightning "
        "precision name (32, bf16-mixed, ...), used as given",
    )
    args = parser.parse_args()
    try:
        stage = load_stage(args.ckpt, torch.device("cuda" if torch.cuda.is_available() else "cpu"), "--ckpt")
        typed = stage.typed_cfg
        if not typed.is_super_resolution:
            raise ConfigError(f"--ckpt: {args.ckpt} is a base stage (unet_type {typed.unet_type}), not a super-resolution stage")
        precision, reason = choose_precision(args.precision, stage.device.type)
        print(f"sampling {reason}")
        if args.encoder_path:
            stage.set_text_encoder(TextEncoder.from_path(args.encoder_path, device=str(stage.device)))
        low, high = typed.low_resolution, typed.unet.image_size  # the full-size task, also for a stage trained on crops
        pairs = list(held_out_pairs(args.shards, low, high, args.num_images))
        if not pairs:
            raise ConfigError(f"--shards: no samples with jpg and txt in {args.shards}")
    except (ConfigError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    model_psnr, bicubic_psnr = [], []
    for start in range(0, len(pairs), args.batch_size):
        captions, lowres, truth = zip(*pairs[start : start + args.batch_size])
        lowres, truth = torch.stack(lowres), torch.stack(truth)
        text_embed, text_mask = stage.encode_prompts(list(captions))
        generator = torch.Generator(device=stage.device).manual_seed(args.seed + start)
        upscaled = stage.sample(
            text_embed, text_mask, lowres=lowres, noise_cond_aug_sigma=args.noise_cond_aug_sigma, sampler=args.sampler,
            steps=args.steps, guidance_scale=args.cfg, thresholding=args.thresholding, generator=generator,
            precision=precision,
        ).cpu()
        bicubic = F.interpolate(lowres, size=(high, high), mode="bicubic", align_corners=False)
        model_psnr.append(psnr(upscaled, truth))
        bicubic_psnr.append(psnr(bicubic, truth))
    model_psnr, bicubic_psnr = torch.cat(model_psnr), torch.cat(bicubic_psnr)
    wins = (model_psnr > bicubic_psnr).float().mean().item()
    n = len(model_psnr)
    print(f"images: {n} ({low} -> {high})")
    print(f"psnr model: {model_psnr.mean():.2f} dB (+- {model_psnr.std() / math.sqrt(n):.2f})")
    print(f"psnr bicubic: {bicubic_psnr.mean():.2f} dB (+- {bicubic_psnr.std() / math.sqrt(n):.2f})")
    print(f"model better on: {100 * wins:.1f}% of images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
