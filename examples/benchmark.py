"""Throughput of one Imagen stage on synthetic data, with model FLOPs, utilisation and an optional peer:

    python examples/benchmark.py --config-name base64-500m-edm mode=train [compare=diffusers] [overrides]
    python examples/benchmark.py --config-name base64-500m-edm mode=sample sample_batch=32 sample_steps=30
    python examples/benchmark.py --config-name base64-2b mode=flops compare=diffusers   # counts only, no memory

The config is a training config from examples/conf/, composed by Hydra with the usual overrides
(`model.micro_batch_size=64`, `trainer.precision=32`, `model.inductor=False`, ...). The benchmark's own keys
(mode, compare, device, warmup, steps, rounds, sample_batch, sampler, sample_steps, cfg_scale, thresholding,
ceiling_size, seed: see `BenchConfig` in nemo_imagen/models/benchmarking.py) are given the same way.
Prints one `key: value` line per figure; docs/performance.md explains them.
"""
import argparse
import sys
from dataclasses import fields
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from nemo_imagen.models.benchmarking import BenchConfig, parse_bench_config, run_benchmark
from nemo_imagen.models.trainer_builder import exit_on_config_error

CONFIG_DIR = Path(__file__).resolve().parent / "conf"
BENCH_KEYS = {f.name for f in fields(BenchConfig)}


def split_overrides(overrides):
    """-> ({benchmark key: value}, [training-config overrides for Hydra])."""
    bench, hydra_overrides = {}, []
    for override in overrides:
        key, sep, value = override.partition("=")
        if sep and key in BENCH_KEYS:
            bench[key] = value
        else:
            hydra_overrides.append(override)
    return bench, hydra_overrides


@exit_on_config_error
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-name", "-cn", default="base64-500m-edm", help="a config in examples/conf/")
    parser.add_argument("overrides", nargs="*", help="key=value: benchmark keys and Hydra overrides")
    args = parser.parse_args(argv)
    bench_values, hydra_overrides = split_overrides(args.overrides)
    bench = parse_bench_config(bench_values)
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            cfg = compose(config_name=args.config_name, overrides=hydra_overrides)
    except (HydraException, OmegaConfBaseException) as error:
        print(f"error: {str(error).splitlines()[0]}", file=sys.stderr)
        sys.exit(2)
    run_benchmark(cfg, bench)


if __name__ == "__main__":
    main()
