#!/usr/bin/env bash
# Kernel proof on the GPU host in one call, most important first, inside a deadline (default 560 s):
# every op's GPU correctness tests, then each op's microbenchmark (ours vs SGLang's kernels, same inputs,
# same run), then the tuning sweeps while time is left. Results come back as $OUT/kernels.tgz.
#   device: bash scripts/device/kernels.sh     (carry .gpu-bundle)
set -uo pipefail
source scripts/device/setup.sh || exit 1
START=$(date +%s); DEADLINE=${DEADLINE:-560}
left() { echo $(( DEADLINE - ($(date +%s) - START) )); }
step() {  # step SECONDS COMMAND...: run with a timeout capped by the time left
  local t=$1; shift; local l; l=$(left); (( l < 20 )) && { echo "SKIPPED (deadline): $*"; return; }
  (( t > l )) && t=$l; echo "=== [$(left)s left] $*" | tee -a "$K/log.txt"
  timeout "$t" "$@" 2>&1 | tee -a "$K/log.txt" | tail -n 30   # the whole log travels back in the tarball
}
K=/tmp/kernels; mkdir -p "$K"   # tarred at the end: $OUT takes 8 files at most
# Which ops each phase covers and the per-step limits (seconds) can be narrowed for a short call:
#   TESTS="mxfp4_moe" BENCHES="mxfp4_moe" SWEEPS="" T_TEST=240 bash scripts/device/kernels.sh
# PYTEST_K selects tests by name (pytest -k) in every op; BENCH_ARGS_<op> / SWEEP_ARGS_<op> are that op's bench
# and sweep options, e.g.
#   TESTS="mla_decode" PYTEST_K="gluon" BENCHES="mla_decode" BENCH_ARGS_mla_decode="--kv-dtype fp8" SWEEPS="" ...
#   SWEEPS="mla_decode" SWEEP_ARGS_mla_decode="--variants gluon_ws" ...
for op in ${TESTS-mla_decode mxfp4_gemm mxfp4_moe}; do
  step "${T_TEST:-180}" python3 -m pytest -q -m gpu "overlays/$op" -p no:cacheprovider ${PYTEST_K:+-k "$PYTEST_K"}
done
for op in ${BENCHES-mxfp4_gemm mxfp4_moe mla_decode}; do
  args="BENCH_ARGS_$op"
  step "${T_BENCH:-120}" speedrun kernels bench "$op" --out "$K" ${!args:-}
done
for op in ${SWEEPS-mla_decode mxfp4_moe mxfp4_gemm}; do
  args="SWEEP_ARGS_$op"
  step "${T_SWEEP:-130}" python3 -m "speedrun.eval.kernels.${op}_bench" --out "$K" --sweep ${!args:-}
done
ls -la "$K"; tar czf "$OUT/kernels.tgz" -C /tmp kernels
