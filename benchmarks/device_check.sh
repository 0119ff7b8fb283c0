#!/usr/bin/env bash
# One prepared check for a machine with a GPU (about 8 minutes in all): installs the `cuda` extra when jax sees
# no GPU yet, then runs, each under `timeout`,
#   1. benchmarks/speed.py           (every network and both samplers; bf16 and fp32, batches 1 and 4)
#   2. benchmarks/speed.py --official (only when OFFICIAL_PATH is set: a guided-diffusion and/or ResShift checkout,
#      comma-separated; entries OFFICIAL_ONLY, default adm_small,swin; torch needed)
#   3. benchmarks/deqir_solvers.py   at T = 25 and T = 100 (SR x4, one photo; official Anderson, taa_window, default)
#   4. benchmarks/train_step.py      (one ResShift train step, realsr_x4_v3 sizes, bf16)
# writing every JSON into benchmarks/results/device-<UTC date>/ and printing a summary at the end.
#
#   bash benchmarks/device_check.sh                        # from the repository root
#   OFFICIAL_PATH=/path/to/guided-diffusion,/path/to/ResShift bash benchmarks/device_check.sh
#   TOTAL_S=480 OUT_DIR=/some/folder bash benchmarks/device_check.sh
#   SKIP_INSTALL=1 TOTAL_S=60 OUT_DIR=/tmp/dc bash benchmarks/device_check.sh      # dry run of the mechanics
#
# A step gets min(its cap, the time left of TOTAL_S); a step that does not fit is skipped and says so. speed.py
# writes its JSON after every case and stops starting new ones after --budget seconds, so a cut keeps results.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"
TOTAL_S="${TOTAL_S:-480}"
OUT_DIR="${OUT_DIR:-benchmarks/results/device-$(date -u +%Y%m%d-%H%M)}"
mkdir -p "$OUT_DIR"
START=$SECONDS
declare -a SUMMARY=()

left() { echo $(( TOTAL_S - (SECONDS - START) )); }

# step NAME CAP_S COMMAND...: runs COMMAND under timeout min(CAP_S, time left), logs to OUT_DIR/NAME.log
step() {
  local name=$1 cap=$2; shift 2
  local remaining; remaining=$(left)
  local limit=$(( cap < remaining ? cap : remaining ))
  if (( limit < 20 )); then
    SUMMARY+=("$(printf '%-16s skipped (%ss left of %ss)' "$name" "$remaining" "$TOTAL_S")")
    return
  fi
  echo "== $name (timeout ${limit}s): $*"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT_DIR/$name.log"
  local rc=${PIPESTATUS[0]}
  local status="ok"
  (( rc == 124 || rc == 137 )) && status="TIMED OUT after ${limit}s"
  (( rc != 0 && rc != 124 && rc != 137 )) && status="FAILED (exit $rc)"
  SUMMARY+=("$(printf '%-16s %-28s %4ss' "$name" "$status" "$(( SECONDS - t0 ))")")
}

# 0. the GPU build of jax (pyproject.toml extra `cuda = ["jax[cuda12]"]`), unless jax already sees a GPU
#    (SKIP_INSTALL=1: never install, e.g. for a dry run of the script on a CPU machine)
if [[ -n "${SKIP_INSTALL:-}" ]]; then
  SUMMARY+=("$(printf '%-16s %s' install "skipped: SKIP_INSTALL set")")
elif "$PY" -c "import jax, sys; sys.exit(0 if jax.default_backend() == 'gpu' else 1)" 2>/dev/null; then
  SUMMARY+=("$(printf '%-16s %s' install "skipped: jax already sees a GPU")")
else
  step install 150 "$PY" -m pip install -q -e ".[cuda]"
fi
"$PY" -c "import jax; print('jax', jax.__version__, jax.devices())" 2>&1 | tee "$OUT_DIR/devices.log"

# 1. every network and both samplers (ours)
step speed 180 "$PY" benchmarks/speed.py --dtypes bfloat16,float32 --batches 1,4 --repeats 5 --budget 130 \
  --out "$OUT_DIR/speed.json"

# 2. the official networks on the same weights, interleaved (only with OFFICIAL_PATH)
if [[ -n "${OFFICIAL_PATH:-}" ]]; then
  # torch's device: cuda when the installed torch has it (the test extra pins a CPU wheel: then the ratio
  # compares our GPU with torch on the CPU, which the JSON's official_device says)
  OFFICIAL_DEVICE="${OFFICIAL_DEVICE:-$("$PY" -c \
    "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')" 2>/dev/null || echo cpu)}"
  step official 90 "$PY" benchmarks/speed.py --only "${OFFICIAL_ONLY:-adm_small,swin}" --batches 1 \
    --dtypes float32 --repeats 5 --official "$OFFICIAL_PATH" --official-device "$OFFICIAL_DEVICE" --pairs 3 \
    --quiet-timeout 5 \
    --out "$OUT_DIR/speed_official.json"
else
  SUMMARY+=("$(printf '%-16s %s' official "skipped: OFFICIAL_PATH not set")")
fi

# 3. DeqIR's solvers against the sequential chain at T = 25 and 100 (SR x4, one photo, the embedded prior)
step solvers_T25 60 "$PY" benchmarks/deqir_solvers.py --timesteps 25 --tasks sr_x4 --photos chelsea \
  --solvers anderson,taa_window,default --batch-sizes 1,5,25 \
  --out "$OUT_DIR/deqir_solvers_T25.json" --png "$OUT_DIR/deqir_solvers_T25.png"
step solvers_T100 90 "$PY" benchmarks/deqir_solvers.py --timesteps 100 --tasks sr_x4 --photos chelsea \
  --solvers anderson,taa_window,default --batch-sizes 1,10,100 \
  --out "$OUT_DIR/deqir_solvers_T100.json" --png "$OUT_DIR/deqir_solvers_T100.png"

# 4. one ResShift train step (released UNet size, bf16)
step train_step 90 "$PY" benchmarks/train_step.py --batch 8 --steps 5 --dtype bfloat16 --out "$OUT_DIR/train_step.json"

# 5. compiled memory of DeqIR at T = 100 with ADM 256 on this device (compiles only; runs nothing)
step deqir_memory 60 "$PY" benchmarks/deqir_memory.py --steps 100 --chunks 0,13 --solvers default \
  --dtypes bfloat16 --out "$OUT_DIR/deqir_memory.json"

echo
echo "== summary ($(( SECONDS - START ))s of ${TOTAL_S}s; results in $OUT_DIR)"
for line in "${SUMMARY[@]}"; do echo "  $line"; done
for f in "$OUT_DIR"/*.json; do [[ -e "$f" ]] && echo "  wrote $f"; done
if [[ -f "$OUT_DIR/train_step.log" ]]; then
  grep -E '^(device|step_s|images_per_s|mfu) ' "$OUT_DIR/train_step.log" | sed 's/^/  train_step: /'
fi
