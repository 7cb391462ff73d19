"""Export a trained stage.

    # Lightning checkpoint -> .nemo (the EMA weights when the run kept them)
    python examples/export.py --ckpt nemo_experiments/run/checkpoints/last.ckpt --nemo stage.nemo
    # ... and/or the stage's UNet as ONNX, checked against PyTorch with onnxruntime when it is installed
    python examples/export.py --ckpt stage.nemo --onnx stage_unet.onnx

--ckpt takes a .ckpt written by examples/train.py or a .nemo file.
"""
import argparse
import sys
from pathlib import Path

import torch

from nemo_imagen.models.config import ConfigError
from nemo_imagen.models.export import checkpoint_to_nemo, export_onnx, onnx_relative_error
from nemo_imagen.models.pipeline import load_stage


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="a .ckpt from examples/train.py, or a .nemo file")
    parser.add_argument("--nemo", help="write this .nemo file (from a .ckpt)")
    parser.add_argument("--onnx", help="write the stage's UNet as this ONNX file")
    parser.add_argument("--no-ema", dest="use_ema", action="store_false", help="export the trained, not the EMA, weights")
    args = parser.parse_args()
    if not (args.nemo or args.onnx):
        parser.error("give --nemo and/or --onnx")
    try:
        if args.nemo:
            if Path(args.ckpt).suffix != ".ckpt":
                raise ConfigError(f"--ckpt: {args.ckpt} is not a Lightning .ckpt (a .nemo needs no conversion)")
            model = checkpoint_to_nemo(args.ckpt, args.nemo, use_ema=args.use_ema)
            print(f"nemo: {args.nemo}")
        else:
            model = load_stage(args.ckpt, torch.device("cpu"), "--ckpt")
        if args.onnx:
            export_onnx(model, args.onnx, use_ema=args.use_ema)
            print(f"onnx: {args.onnx}")
            try:
                error = onnx_relative_error(model, args.onnx, args.use_ema)
                print(f"onnxruntime vs torch: max relative difference {error:.2e}")
            except ImportError:
                print("onnxruntime is not installed: the ONNX graph was not checked")
    except (ConfigError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
