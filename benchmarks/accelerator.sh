#!/bin/bash
# One prepared accelerator benchmark: on whatever GPU/TPU is present, in under
# 8 minutes, the figures jaxpix has never measured on one (the raw forward
# rate of ResNet-18 at the :cpu width and at full width, the attacks'
# efficiency at 24 and 500 images, first call and warm, the No Defence / AT /
# APR train steps, the full-budget eval of No Defence), into one JSON,
# $OUT/accelerator.json, rewritten as each figure lands: a run stopped at any
# point keeps what it measured. What each figure is: benchmarks/accelerator.py.
#
# Before the device run, here, once per checkout (the device machine has no
# ../shared beside the repo and no ml-collections; nothing can be fetched there):
#
#   echo /.accel/ >> .git/info/exclude
#   mkdir -p .accel/cifar10 && cp ../shared/data/cifar10/test.npz .accel/cifar10/
#   python3 -m pip download -q --no-deps --only-binary=:all: -d .accel/wheels ml-collections==1.1.0
#
# Then run it there with `.accel` carried, e.g. with the device tool:
#   run(command='OUT=$OUT bash benchmarks/accelerator.sh', carry=['.accel'], timeout_s=540)
# and commit $OUT/accelerator.json as benchmarks/results/accelerator_<device>.json.
#
# On the CPU, the check (LeNet, tiny sizes; tests/test_accelerator.py runs it):
#   OUT=/tmp/accel TINY=1 bash benchmarks/accelerator.sh
#
# Environment: OUT (required), DATA (the folder holding test.npz; default
# .accel/cifar10, else ../shared/data/cifar10), PY (default python3),
# DEADLINE (seconds after which no section starts; default 420), TINY=1,
# SECTIONS (default all: forward,attacks,train_steps,full_eval).
set -u -o pipefail
: "${OUT:?set OUT to the output folder}"
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)  # absolute: the script moves to the repo root
cd "$(dirname "$0")/.." || exit 2
PY=${PY:-python3}
if [ -z "${DATA:-}" ]; then
  DATA=.accel/cifar10
  [ -f "$DATA/test.npz" ] || DATA=../shared/data/cifar10
fi
log=$OUT/log.txt
if ! $PY -c 'import ml_collections' 2>/dev/null; then
  if ls .accel/wheels/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/accel_site .accel/wheels/*.whl \
      || { echo "accelerator.sh: installing .accel/wheels failed" | tee -a "$log"; exit 2; }
    export PYTHONPATH=/tmp/accel_site${PYTHONPATH:+:$PYTHONPATH}
  fi
fi
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
# The full-budget eval runs in a child process: a parent holding 75% of the
# GPU's memory (JAX's default preallocation) would starve it.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
# The devices JAX sees, in the log first (accelerator.py refuses a CPU-only
# JAX before measuring anything).
$PY -c 'import jax; print("jax", jax.__version__, jax.devices())' 2>&1 | tee -a "$log" || exit 2
args=(--json "$OUT/accelerator.json" --data-dir "$DATA" --deadline-s "${DEADLINE:-420}")
[ "${TINY:-0}" = 1 ] && args+=(--tiny --allow-cpu)
[ -n "${SECTIONS:-}" ] && args+=(--sections "$SECTIONS")
# A hard stop 60 s past the deadline: the JSON keeps whatever landed before it.
timeout --signal=INT --kill-after=15 $(( ${DEADLINE:-420} + 60 )) \
  $PY benchmarks/accelerator.py "${args[@]}" 2>&1 | tee -a "$log"
