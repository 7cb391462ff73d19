"""Throughput of one Imagen stage on synthetic data, with model FLOPs, utilisation and an optional peer:

    python examples/benchmark.py --config-name base64-500m-edm mode=train [compare=diffusers] [overrides]
    python examples/benchmark.py --config-name base64-500m-edm mode=sample sample_batch=32 sample_steps=30
    python examples/benchmark.py --config-name base64-500m-edm mode=sample cascade=sr256-600m-edm   # 64 -> 256
    python examples/benchmark.py --config-name base64-2b mode=flops compare=diffusers   # counts only, no memory

The config is a training config from examples/conf/, composed by Hydra with the usual overrides
(`model.micro_batch_size=64`, `trainer.precision=32`, `model.inductor=False`, ...). The benchmark's own keys
(mode, compare, device, warmup, steps, rounds, sample_batch, sampler, sample_steps, cfg_scale, thresholding,
ceiling_size, seed, cascade, cascade_steps, cascade_cfg_scale: see `BenchConfig` in
benchmarks/throughput.py) are given the same way; `cascade.KEY=VALUE` overrides the cascade's SR config.
Prints one `key: value` line per figure; docs/performance.md explains them.
"""
import argparse
import sys
from dataclasses import fields
from pathlib import Path

from nemo_imagen.models.cli import config_name_error, exit_on_config_error, fail, override_errors

CONFIG_DIR = Path(__file__).resolve().parent / "conf"
# The benchmark lives outside the package, in the repository's benchmarks/ (a tool, not model code).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def check_names_and_keys(config_name, overrides):
    """Before the heavy imports: the configs exist and every dotted override names one of their keys (benchmark
    keys have no dot; they are checked with their values once `BenchConfig` is imported)."""
    cascade = next((value for key, _, value in (item.partition("=") for item in overrides) if key == "cascade"), None)
    for name, label in ((config_name, None), (cascade, f"cascade={cascade}")):
        error = name and config_name_error(CONFIG_DIR, name, label)
        if error:
            fail(error)
    stage = [item for item in overrides if "." in item.partition("=")[0] and not item.startswith("cascade.")]
    errors = override_errors(CONFIG_DIR, config_name, stage)
    if cascade:
        cascade_overrides = [item[len("cascade."):] for item in overrides if item.startswith("cascade.")]
        errors += override_errors(CONFIG_DIR, cascade, cascade_overrides, prefix="cascade.")
    if errors:
        fail(errors[0])


def split_overrides(overrides, bench_keys):
    """-> ({benchmark key: value}, [overrides of the config], [overrides of the cascade's SR config])."""
    bench, stage_overrides, cascade_overrides = {}, [], []
    for override in overrides:
        key, sep, value = override.partition("=")
        if sep and key in bench_keys:
            bench[key] = value
        elif override.startswith("cascade."):
            cascade_overrides.append(override[len("cascade."):])
        else:
            stage_overrides.append(override)
    return bench, stage_overrides, cascade_overrides


def compose_config(name, overrides):
    """The training config `name` from examples/conf/ with Hydra overrides; a bad override exits with one line."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            return compose(config_name=name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as error:
        print(f"error: {str(error).splitlines()[0]}", file=sys.stderr)
        sys.exit(2)


@exit_on_config_error
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-name", "-cn", default="base64-500m-edm", help="a config in examples/conf/")
    parser.add_argument("overrides", nargs="*", help="key=value: benchmark keys and Hydra overrides")
    args = parser.parse_args(argv)
    check_names_and_keys(args.config_name, args.overrides)
    from benchmarks.throughput import BenchConfig, parse_bench_config, run_benchmark  # torch: seconds

    bench_keys = {f.name for f in fields(BenchConfig)}
    bench_values, stage_overrides, cascade_overrides = split_overrides(args.overrides, bench_keys)
    bench = parse_bench_config(bench_values)
    if cascade_overrides and not bench.cascade:
        print(f"error: {cascade_overrides[0]!r}: cascade.* overrides need cascade=CONFIG", file=sys.stderr)
        sys.exit(2)
    cfg = compose_config(args.config_name, stage_overrides)
    cascade_cfg = compose_config(bench.cascade, cascade_overrides) if bench.cascade else None
    run_benchmark(cfg, bench, cascade_cfg)


if __name__ == "__main__":
    main()
