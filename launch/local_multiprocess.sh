#!/usr/bin/env bash
# Run N JAX processes on this machine, each with D virtual CPU devices, joined through jax.distributed
# (real cross-process collectives over gloo). Every process runs the same command; the trainer calls
# ircore.mesh.initialize_distributed(), which reads the JAX_* variables set here.
#
#   launch/local_multiprocess.sh N D -- python -m resshift_jax.train --config configs/resshift/tiny_train.py \
#       --workdir /tmp/run --config.data.folder=/path/to/images --config.train.mesh_shape="(2,4)"
#
# Process 0 prints to this terminal; process i > 0 writes $LOG_DIR/process_<i>.log (default: ./mp_logs).
# SIGTERM / SIGINT are forwarded to all processes (the trainer then saves and stops at an agreed step).
set -euo pipefail
if [[ $# -lt 3 ]]; then
  echo "usage: $0 NUM_PROCESSES DEVICES_PER_PROCESS -- COMMAND..." >&2
  exit 2
fi
NPROC=$1
NDEV=$2
shift 2
[[ "${1:-}" == "--" ]] && shift
LOG_DIR=${LOG_DIR:-./mp_logs}
mkdir -p "$LOG_DIR"
PORT=${JAX_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}

pids=()
for ((i = 0; i < NPROC; i++)); do
  (
    export JAX_PLATFORMS=cpu
    export XLA_FLAGS="--xla_force_host_platform_device_count=${NDEV} ${XLA_FLAGS_EXTRA:-}"
    export JAX_COORDINATOR_ADDRESS="127.0.0.1:${PORT}"
    export JAX_NUM_PROCESSES="$NPROC"
    export JAX_PROCESS_ID="$i"
    if [[ $i -eq 0 ]]; then
      exec "$@"
    else
      exec "$@" >"$LOG_DIR/process_$i.log" 2>&1
    fi
  ) &
  pids+=($!)
done

forward() { kill -TERM "${pids[@]}" 2>/dev/null || true; }
trap forward TERM INT

status=0
for pid in "${pids[@]}"; do
  while true; do
    wait "$pid" && rc=0 || rc=$?
    kill -0 "$pid" 2>/dev/null || break  # still running: wait was interrupted by a forwarded signal
  done
  [[ $rc -eq 0 ]] || status=$rc
done
exit "$status"
