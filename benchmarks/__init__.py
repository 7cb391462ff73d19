"""Tools that measure the package, outside it: `throughput` (run by examples/benchmark.py)."""
