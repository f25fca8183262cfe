#!/usr/bin/env bash
# Kernel proof on the GPU host, one call: GPU reference tests, then each op's microbenchmark
# (ours vs SGLang's kernels, same inputs, same run). Results land in $OUT/kernels/.
#   device: bash scripts/device/kernels.sh [OPS...]   (carry .gpu-bundle)
set -uo pipefail
source scripts/device/setup.sh || exit 1
OPS=${*:-mla_decode mxfp4_gemm mxfp4_moe}
mkdir -p "$OUT/kernels"
for op in $OPS; do
  echo "=== $op: GPU tests"
  timeout 240 python3 -m pytest -q -m gpu "overlays/$op" -x -p no:cacheprovider 2>&1 | tail -n 25
  echo "=== $op: bench"
  timeout 300 speedrun kernels bench "$op" --out "$OUT/kernels" 2>&1 | tail -n 40
done
ls -la "$OUT/kernels"
