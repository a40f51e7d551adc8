#!/usr/bin/env bash
# The speed checks of one GPU in one call (about 5 minutes on an H100/H200): compile time (scanned
# vs unrolled layers), decoding against the memory-bandwidth limit (vocalnet-1b speech decoder,
# bfloat16, batch 1 and 8), whole-model train steps with MFU, and CosyVoice2's token2wav per block.
# Every JSON lands under OUT.
#
#     bash experiments/gpu_bench.sh [--smoke] [OUT]      # default OUT=runs/gpu_bench
#
# Needs JAX (CUDA on a GPU), flax, optax, einops and this project importable (pip install -e . --no-deps
# is enough: the benchmarks import no Grain, librosa or tensorboardX). --smoke runs the three
# benchmarks at `tiny` shapes, on any machine (tests/test_bench.py runs it on CPU).
set -euo pipefail
SMOKE=0
if [[ "${1:-}" == "--smoke" ]]; then SMOKE=1; shift; fi
OUT=${1:-runs/gpu_bench}
PY=${PYTHON:-python}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null > "$OUT/device.txt" || true
$PY -c "import jax; print('jax', jax.__version__, jax.devices())" | tee -a "$OUT/device.txt"
if (( SMOKE )); then
  $PY -m experiments.bench_compile --configs tiny --programs sample_ar --num-blocks 1 --out "$OUT/compile.json"
  $PY -m experiments.bench_decode --configs tiny --num-blocks 1 --denoise-steps 1,4 --threshold 0.5 \
      --repeats 1 --text-len 8 --out "$OUT/decode_b1.json"
  $PY -m experiments.bench_train_full --config tiny --stages text --batch 2 --steps 1 --out "$OUT/train_full.json"
else
  $PY -m experiments.bench_compile --configs vocalnet-1b --programs train_text,sample_mdm --timeout 60 \
      --out "$OUT/compile.json"
  for b in 1 8; do
    $PY -m experiments.bench_decode --configs vocalnet-1b --dtype bfloat16 --batch $b --denoise-steps 1,4 \
        --threshold 0 --repeats 5 --out "$OUT/decode_b$b.json"
  done
  # cuDNN's fused attention (never run yet: a failure is reported, not fatal)
  $PY -m experiments.bench_decode --configs vocalnet-1b --dtype bfloat16 --denoise-steps 1 --threshold 0 \
      --repeats 5 --out "$OUT/decode_b1_cudnn.json" attention=cudnn || echo "attention=cudnn failed: see above"
  $PY -m experiments.bench_train_full --config vocalnet-1b --batch 8 --steps 3 --out "$OUT/train_full.json"
  $PY -m experiments.bench_token2wav --hops 16,15,25 --blocks 5 --out "$OUT/token2wav.json"
fi
echo "results: $(ls "$OUT"/*.json | tr '\n' ' ')"
