#!/usr/bin/env bash
# The demo's GPU recipe and the decode benchmark in one go, on one H100/H200 (or any GPU):
#
#     bash experiments/gpu_check.sh [OUT]        # default OUT=runs/gpu
#
# Needs the project installed with its data extra (`make setup`, or pip install -e '.[data]') and
# JAX with CUDA. The corpus is built in data/embedded unless it is there (a few minutes on CPU).
# The demo's GPU preset (experiments/recipe.py GPU) is sized by arithmetic for <= 8 minutes once the
# corpus exists; it has not been timed on a GPU yet. Prints where the results are.
set -euo pipefail
OUT=${1:-runs/gpu}
PY=${PYTHON:-python}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | tee "$OUT/device.txt" || true
$PY -c "import jax; print('jax', jax.__version__, jax.devices())" | tee -a "$OUT/device.txt"
time $PY -m experiments.demo --preset gpu --out "$OUT/demo"
$PY -m experiments.bench_decode --configs tiny,vocalnet-1b --dtype bfloat16 --out "$OUT/bench_decode.json"
echo "results: $OUT/demo/report.md $OUT/demo/report.json $OUT/demo/quality_vs_steps.png $OUT/bench_decode.json"
