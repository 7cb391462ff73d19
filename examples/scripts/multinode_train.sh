#!/usr/bin/env bash
# Multi-node training inside a SLURM allocation: srun starts one training task per GPU on the first nodes
# (Lightning reads SLURM_PROCID / SLURM_LOCALID / SLURM_NODEID / SLURM_NTASKS; the rendezvous address is the
# first training node), and, with EMBED_GPUS > 0, one embedding server per GPU on the last nodes.
# Called by the example_slurm_*.sub files; arguments:
#
#   CONFIG PRECISION GPUS_PER_NODE BATCH_PER_GPU LOG_DIR EMBED_GPUS [overrides...]
#
# EMBED_GPUS must be 0 or a multiple of GPUS_PER_NODE (servers get whole nodes): with N nodes in the job,
# N - EMBED_GPUS / GPUS_PER_NODE nodes train. Environment as in singlenode_train.sh, plus MASTER_PORT (default
# 29500), CONTAINER / CONTAINER_MOUNTS (pyxis: srun --container-image/--container-mounts), and for DRY_RUN=1
# outside SLURM: DRY_RUN_NODES (default 2 + the server nodes) fake host names node001, node002, ...
set -euo pipefail
REPO=${REPO:-${SLURM_SUBMIT_DIR:-$(pwd)}}
source "$REPO/examples/scripts/common.sh"

(( $# >= 6 )) || die "usage: CONFIG PRECISION GPUS_PER_NODE BATCH_PER_GPU LOG_DIR EMBED_GPUS [overrides...]"
CONFIG=$1 PRECISION=$2 GPUS_PER_NODE=$3 BATCH_PER_GPU=$4 LOG_DIR=$5 EMBED_GPUS=$6
shift 6
check_common_args "$CONFIG" "$PRECISION" "$GPUS_PER_NODE" "$BATCH_PER_GPU" "$LOG_DIR" "$EMBED_GPUS"
(( EMBED_GPUS % GPUS_PER_NODE == 0 )) \
  || die "EMBED_GPUS: $EMBED_GPUS is not a multiple of GPUS_PER_NODE $GPUS_PER_NODE (servers get whole nodes)"
SERVER_NODES=$((EMBED_GPUS / GPUS_PER_NODE))

if [[ -n "${SLURM_JOB_NODELIST:-}" ]]; then
  mapfile -t HOSTS < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
elif [[ "${DRY_RUN:-0}" == 1 ]]; then
  mapfile -t HOSTS < <(for ((n = 1; n <= ${DRY_RUN_NODES:-$((2 + SERVER_NODES))}; n++)); do printf 'node%03d\n' "$n"; done)
else
  die "not inside a SLURM allocation (no SLURM_JOB_NODELIST): submit an example_slurm_*.sub with sbatch, or set DRY_RUN=1"
fi
TRAIN_NODES=$((${#HOSTS[@]} - SERVER_NODES))
(( TRAIN_NODES > 0 )) || die "EMBED_GPUS: $EMBED_GPUS server GPUs take all ${#HOSTS[@]} nodes; none is left to train"
TRAIN_HOSTS=("${HOSTS[@]:0:TRAIN_NODES}")
SERVER_HOSTS=("${HOSTS[@]:TRAIN_NODES}")
WORLD_SIZE=$((TRAIN_NODES * GPUS_PER_NODE))
GLOBAL=$(global_batch "$WORLD_SIZE" "$BATCH_PER_GPU")
export MASTER_ADDR=${TRAIN_HOSTS[0]} MASTER_PORT=${MASTER_PORT:-29500}

CONTAINER_ARGS=()
[[ -n "${CONTAINER:-}" ]] && CONTAINER_ARGS=(--container-image="$CONTAINER" --container-mounts="${CONTAINER_MOUNTS:-$REPO:$REPO}" --container-workdir="$REPO")
join() { local IFS=,; echo "$*"; }

EXTRA=()
if (( SERVER_NODES > 0 )); then
  trap stop_servers EXIT
  URLS=()
  for host in "${SERVER_HOSTS[@]}"; do
    for ((i = 0; i < GPUS_PER_NODE; i++)); do URLS+=("$host:$((SERVER_PORT + 3 * i))"); done
  done
  # One server per GPU: task i of a node serves on GPU i, port SERVER_PORT + 3 i, bound to all interfaces.
  run_background srun --nodes="$SERVER_NODES" --ntasks-per-node="$GPUS_PER_NODE" --ntasks="$EMBED_GPUS" \
    --nodelist="$(join "${SERVER_HOSTS[@]}")" "${CONTAINER_ARGS[@]}" --kill-on-bad-exit=1 --quit-on-interrupt \
    bash -c 'CUDA_VISIBLE_DEVICES=$SLURM_LOCALID exec "$0" "$@" --http-port $(('"$SERVER_PORT"' + 3 * SLURM_LOCALID))' \
    "$(pytriton_python)" "$REPO/examples/embedding_server.py" --encoder "$ENCODER_PATH" --token-length "$TOKEN_LENGTH" \
    --model-name "$SERVER_MODEL_NAME" --host 0.0.0.0 --device cuda --dtype "${SERVER_DTYPE:-bfloat16}"
  wait_for_servers "${URLS[@]}"
  mapfile -t EXTRA < <(server_overrides "${URLS[@]}")
fi

if [[ "${DRY_RUN:-0}" == 1 ]]; then
  echo "# training: $TRAIN_NODES nodes x $GPUS_PER_NODE GPUs = world size $WORLD_SIZE, MASTER_ADDR=$MASTER_ADDR MASTER_PORT=$MASTER_PORT"
  for ((node = 0; node < TRAIN_NODES; node++)); do
    echo "# node $node ${TRAIN_HOSTS[node]}: SLURM_PROCID $((node * GPUS_PER_NODE))..$(((node + 1) * GPUS_PER_NODE - 1)) (global ranks), SLURM_LOCALID 0..$((GPUS_PER_NODE - 1)) (cuda devices)"
  done
fi
run srun --nodes="$TRAIN_NODES" --ntasks-per-node="$GPUS_PER_NODE" --ntasks="$WORLD_SIZE" --distribution=block \
  --nodelist="$(join "${TRAIN_HOSTS[@]}")" "${CONTAINER_ARGS[@]}" --kill-on-bad-exit=1 \
  --export=ALL,MASTER_ADDR="$MASTER_ADDR",MASTER_PORT="$MASTER_PORT" \
  python "$REPO/examples/train.py" --config-name "$CONFIG" \
  trainer.devices="$GPUS_PER_NODE" trainer.num_nodes="$TRAIN_NODES" ++trainer.strategy=ddp trainer.precision="$PRECISION" \
  model.micro_batch_size="$BATCH_PER_GPU" model.global_batch_size="$GLOBAL" exp_manager.exp_dir="$LOG_DIR" \
  "${EXTRA[@]}" "$@"
