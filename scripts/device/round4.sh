#!/usr/bin/env bash
# Kernel round 4 on the GPU host in one call (carry .gpu-bundle): correctness of the new paths first, then the
# benches that decide them, each step bounded; every step's output goes to $OUT/round4.log.
#   device: bash scripts/device/round4.sh      (QUICK=1: MoE only, about 4 minutes)
set -uo pipefail
source scripts/device/setup.sh || exit 1
L=$OUT/round4.log
step() { local t=$1; shift; echo "=== $*" | tee -a "$L"; timeout "$t" "$@" 2>&1 | grep -v Warning | tee -a "$L" | tail -n 25; }
if [ -n "${QUICK:-}" ]; then  # little device time left: the rot decode's correctness and the MoE bench at decode sizes
  step 110 python3 -m pytest -q -x -m gpu overlays/mx overlays/mxfp4_moe/test_mxfp4_moe_gpu.py -p no:cacheprovider
  step 110 python3 -m speedrun.eval.kernels.mxfp4_moe_bench --out "$OUT/moe" --ms 16,64,128
  exit 0
fi
step 150 python3 -m pytest -q -x -m gpu overlays/mx overlays/mxfp4_moe/test_mxfp4_moe_gpu.py -p no:cacheprovider
step 140 python3 -m speedrun.eval.kernels.mxfp4_moe_bench --out "$OUT/moe" --ms 1,4,16,32,64,128,512
step 130 python3 -m pytest -q -x -m gpu overlays/mla_decode/test_mla_decode_gpu.py -k a8w8 -p no:cacheprovider
step 120 python3 -m speedrun.eval.kernels.mla_decode_bench --out "$OUT/mla" --kv-dtype fp8
