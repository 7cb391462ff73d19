# Shared by the launchers in this folder (sourced, not run).
# DRY_RUN=1 prints every command instead of running it; server and training commands are printed one per line,
# prefixed with "+ ", as shell-quoted words.

die() { echo "error: $*" >&2; exit 2; }

is_count() { [[ "$1" =~ ^[0-9]+$ ]]; }

# run CMD...: run it, or print it under DRY_RUN=1
run() {
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    printf '+'; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}

# run_background CMD...: like run, in the background (its pid is appended to SERVER_PIDS)
run_background() {
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    printf '+'; printf ' %q' "$@"; printf ' &\n'
  else
    "$@" &
    SERVER_PIDS+=("$!")
  fi
}

# The embedding servers' Python: PyTriton pins numpy<2, so it has its own environment (README: Embedding servers).
pytriton_python() {
  if [[ -n "${PYTRITON_PYTHON:-}" ]]; then echo "$PYTRITON_PYTHON"
  elif [[ -x "$REPO/.venv-pytriton/bin/python" ]]; then echo "$REPO/.venv-pytriton/bin/python"
  else echo python
  fi
}

# wait_for_servers URL...: until every server answers ready (SERVER_START_TIMEOUT seconds, default 900)
wait_for_servers() {
  [[ "${DRY_RUN:-0}" == 1 ]] && { echo "# wait until ready: $*"; return; }
  local deadline=$((SECONDS + ${SERVER_START_TIMEOUT:-900})) url
  for url in "$@"; do
    until curl -sf "http://$url/v2/models/${SERVER_MODEL_NAME}/ready" > /dev/null; do
      (( SECONDS < deadline )) || die "embedding server $url not ready after ${SERVER_START_TIMEOUT:-900} s"
      sleep 5
    done
  done
  echo "embedding servers ready: $*"
}

# stop_servers: SIGINT to each server (or to its srun, which then ends the step: the servers get SIGTERM, which
# embedding_server.py handles like SIGINT, removing its PyTriton workspace)
stop_servers() {
  local pid
  for pid in "${SERVER_PIDS[@]}"; do kill -INT "$pid" 2> /dev/null || true; done
  for pid in "${SERVER_PIDS[@]}"; do wait "$pid" 2> /dev/null || true; done
}

# check_common_args CONFIG PRECISION GPUS BATCH_PER_GPU LOG_DIR EMBED_GPUS
check_common_args() {
  [[ -n "$1" ]] || die "CONFIG: the config name (examples/conf/<name>.yaml) is empty"
  [[ -n "$2" ]] || die "PRECISION: empty (Lightning's trainer.precision, e.g. bf16-mixed)"
  is_count "$3" && (( $3 > 0 )) || die "GPUS_PER_NODE: '$3' is not a positive integer"
  is_count "$4" && (( $4 > 0 )) || die "BATCH_PER_GPU: '$4' is not a positive integer"
  [[ -n "$5" ]] || die "LOG_DIR: empty"
  is_count "$6" || die "EMBED_GPUS: '$6' is not a non-negative integer"
  if (( $6 > 0 )) && [[ -z "${ENCODER_PATH:-}" ]]; then
    die "ENCODER_PATH: set it to the text encoder the servers load (conditioning.encoder_path: a local T5 directory or all-MiniLM-L6-v2)"
  fi
}

# global_batch WORLD_SIZE BATCH_PER_GPU: GLOBAL_BATCH_SIZE if set (a multiple: gradient accumulation), else world x batch
global_batch() {
  local global=${GLOBAL_BATCH_SIZE:-$(($1 * $2))}
  is_count "$global" && (( global % ($1 * $2) == 0 && global > 0 )) \
    || die "GLOBAL_BATCH_SIZE: $global is not a positive multiple of $1 GPUs x $2 per GPU"
  echo "$global"
}

# server_overrides URL...: the trainer's Hydra overrides for online_encoding: server
server_overrides() {
  local IFS=,
  echo "model.conditioning.online_encoding=server"
  echo "++model.conditioning.server_urls=[$*]"
  echo "++model.conditioning.server_model_name=$SERVER_MODEL_NAME"
  echo "model.conditioning.token_length=$TOKEN_LENGTH"
}

SERVER_PIDS=()
TOKEN_LENGTH=${TOKEN_LENGTH:-128}
SERVER_MODEL_NAME=${SERVER_MODEL_NAME:-text_encoder}
SERVER_PORT=${SERVER_PORT:-8000}  # server i on a node uses ports SERVER_PORT + 3 i (HTTP), + 1 (gRPC), + 2 (metrics)
