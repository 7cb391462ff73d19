#!/usr/bin/env bash
# Train one Imagen stage on the GPUs of one machine with torchrun (one process per GPU, DDP), optionally with
# text-embedding servers on further, dedicated GPUs.
#
#   bash examples/scripts/singlenode_train.sh CONFIG PRECISION NUM_GPUS BATCH_PER_GPU LOG_DIR [EMBED_GPUS] [overrides...]
#
#   CONFIG         config name in examples/conf (base64-500m, base64-2b, sr256-600m, sr1024-400m, ...)
#   PRECISION      trainer.precision (bf16-mixed, 32, ...)
#   NUM_GPUS       training GPUs: 0 .. NUM_GPUS-1
#   BATCH_PER_GPU  model.micro_batch_size
#   LOG_DIR        exp_manager.exp_dir (logs, checkpoints, .nemo)
#   EMBED_GPUS     GPUs NUM_GPUS .. NUM_GPUS+EMBED_GPUS-1 each run examples/embedding_server.py, and training
#                  uses online_encoding: server (default 0: the config's own text conditioning)
#   overrides      further Hydra overrides, passed to examples/train.py
#
# Environment: GLOBAL_BATCH_SIZE (default NUM_GPUS x BATCH_PER_GPU; a multiple means gradient accumulation),
# ENCODER_PATH and TOKEN_LENGTH (default 128) for the servers, PYTRITON_PYTHON (the servers' interpreter; default
# .venv-pytriton/bin/python), SERVER_PORT (default 8000), DRY_RUN=1 (print the commands, run nothing).
# Example: bash examples/scripts/singlenode_train.sh base64-500m bf16-mixed 8 64 runs/base64-500m
set -euo pipefail
REPO=${REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
source "$REPO/examples/scripts/common.sh"

(( $# >= 5 )) || die "usage: singlenode_train.sh CONFIG PRECISION NUM_GPUS BATCH_PER_GPU LOG_DIR [EMBED_GPUS] [overrides...]"
CONFIG=$1 PRECISION=$2 NUM_GPUS=$3 BATCH_PER_GPU=$4 LOG_DIR=$5
EMBED_GPUS=${6:-0}
shift $(( $# >= 6 ? 6 : 5 ))
check_common_args "$CONFIG" "$PRECISION" "$NUM_GPUS" "$BATCH_PER_GPU" "$LOG_DIR" "$EMBED_GPUS"
GLOBAL=$(global_batch "$NUM_GPUS" "$BATCH_PER_GPU")

EXTRA=()
if (( EMBED_GPUS > 0 )); then
  trap stop_servers EXIT
  URLS=()
  for ((i = 0; i < EMBED_GPUS; i++)); do
    port=$((SERVER_PORT + 3 * i))
    run_background env CUDA_VISIBLE_DEVICES=$((NUM_GPUS + i)) "$(pytriton_python)" "$REPO/examples/embedding_server.py" \
      --encoder "$ENCODER_PATH" --token-length "$TOKEN_LENGTH" --model-name "$SERVER_MODEL_NAME" \
      --host 127.0.0.1 --http-port "$port" --device cuda --dtype "${SERVER_DTYPE:-bfloat16}"
    URLS+=("127.0.0.1:$port")
  done
  wait_for_servers "${URLS[@]}"
  mapfile -t EXTRA < <(server_overrides "${URLS[@]}")
fi

GPU_LIST=$(seq -s, 0 $((NUM_GPUS - 1)))
run env CUDA_VISIBLE_DEVICES="$GPU_LIST" torchrun --standalone --nnodes=1 --nproc-per-node="$NUM_GPUS" \
  "$REPO/examples/train.py" --config-name "$CONFIG" \
  trainer.devices="$NUM_GPUS" trainer.num_nodes=1 ++trainer.strategy=ddp trainer.precision="$PRECISION" \
  model.micro_batch_size="$BATCH_PER_GPU" model.global_batch_size="$GLOBAL" exp_manager.exp_dir="$LOG_DIR" \
  "${EXTRA[@]}" "$@"
