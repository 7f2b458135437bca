#!/bin/bash
# The papers' full attack budget (DE, population 400 x 100 generations) on the
# No Defence and APR models of Part I (docs/results.md; the zoo's
# resnet18_w0.25-none and resnet18_w0.25-apr), on the
# 500 fixed test images, once at the platform's default matmul precision (TF32
# on NVIDIA GPUs) and once at full float32; the wall time of each eval mode
# run, compilation and loading included, goes to $OUT/log.txt. Meant for an
# accelerator: on the 2-core CPU each run takes 2.5-3 hours.
#
#   OUT=/tmp/full_budget bash benchmarks/full_budget_eval.sh
#
# Environment: OUT (required), DATA (the CIFAR-10 npz folder, default
# ../shared/data/cifar10), PY (default python3), N and MAXITER (default 500
# and 100; e.g. N=6 MAXITER=2 to check the script on a CPU).
set -u
: "${OUT:?set OUT to the output folder}"
PY=${PY:-python3}; DATA=${DATA:-../shared/data/cifar10}; N=${N:-500}; IT=${MAXITER:-100}
mkdir -p "$OUT"; log=$OUT/log.txt
$PY -c 'import jax; print(jax.__version__, jax.devices())' >>"$log" 2>&1 || exit 1
ev() {  # name config checkpoint precision
  local name=$1 cfg=$2 ck=$3 prec=$4 t0
  t0=$(date +%s%N)
  env ${prec:+JAX_DEFAULT_MATMUL_PRECISION=$prec} $PY run.py --config "configs/$cfg" \
    --config.mode=eval --config.checkpoint="$ck" --config.data.dir="$DATA" \
    --config.eval.image_set=fixed --config.eval.num_images="$N" --config.eval.maxiter="$IT" \
    --config.eval.gradient_ranked=0 --config.eval.progress=False \
    --workdir "$OUT/$name" >"$OUT/$name.log" 2>&1
  echo "$name rc $? wall_ms $(( ($(date +%s%N) - t0) / 1000000 ))" >>"$log"
}
ev no_defence_default cifar_baseline.py:cpu zoo:resnet18_w0.25-none ''
ev apr_default cifar_apr.py:cpu zoo:resnet18_w0.25-apr ''
ev no_defence_float32 cifar_baseline.py:cpu zoo:resnet18_w0.25-none highest
ev apr_float32 cifar_apr.py:cpu zoo:resnet18_w0.25-apr highest
cat "$log"
