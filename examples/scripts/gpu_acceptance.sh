#!/usr/bin/env bash
# GPU acceptance in one call, on a machine with a CUDA build of torch and no network:
#
#   bash examples/scripts/gpu_acceptance.sh [--budget-s 480] [--out DIR] [--only NAME,...] [--skip NAME,...]
#   bash examples/scripts/gpu_acceptance.sh --list        # the stages, in order, with their planned durations
#   DRY_RUN=1 bash examples/scripts/gpu_acceptance.sh    # the plumbing on CPU (or --dry-run)
#
# Installs the wheels carried in .whl/ (examples/scripts/fetch_gpu_wheels.sh fills it on a networked machine)
# when the imports need them, then runs the CUDA correctness tests, the benchmark rows of docs/performance.md and
# the cascade's sampling at 1024x1024 within the budget, writing report.md and log.txt to --out (default $OUT if
# set, else outputs/gpu_acceptance). All the logic is in examples/gpu_acceptance.py.
#
# Environment: PYTHON (default python3), DRY_RUN=1, OUT.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 2
PYTHON=${PYTHON:-python3}
command -v "$PYTHON" > /dev/null || { echo "error: $PYTHON not found (set PYTHON)" >&2; exit 2; }
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec "$PYTHON" examples/gpu_acceptance.py "$@"
