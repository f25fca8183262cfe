#!/usr/bin/env bash
# End-to-end runs on the GPU host inside one device call: `speedrun run` per recipe (baseline, the agreement
# control when the recipe has one, overlay), under a deadline; every run folder comes back in $OUT/e2e.tgz.
#   device: RUN_ARGS="--concurrency 4,32 --isl 1024 --osl 256" bash scripts/device/e2e.sh RECIPE [RECIPE...]
#   (carry .gpu-bundle and the recipes' own folders under .models: the whole .models can pass the 64 MiB carry limit)
#   SIDES=baseline ... then SIDES=control,overlay ...: one long run split over calls on a warm machine (the run
#   folder .runs/e2e/RECIPE stays there between calls; the report is written by the call that completes it)
#   ABLATE="mxfp4_moe,mxfp4_gemm;mxfp4_moe": after each recipe's run, the overlay side again with only those ops
#   (`speedrun run --ops`, one folder RECIPE.ops-<ops> each); each such folder is reported against the recipe's
#   baseline results (`speedrun compare`) by whichever call finds both (SIDES=none: a call of ablations only), so
#   the overlay sides may come first:
#   SIDES=overlay ABLATE=... on a fresh machine (our server starts in ~3.5 min), then SIDES=baseline on the warm
#   one (stock's DeepGEMM JIT cache is warm by then: ~2 instead of ~5 min)
set -uo pipefail
source scripts/device/setup.sh || exit 1
require_deepgemm e2e.sh || exit 2  # the baseline side is stock at its strongest: DeepGEMM on CUDA
START=$(date +%s); DEADLINE=${DEADLINE:-570}; R=.runs/e2e
mkdir -p "$R"
ablate() {  # ablate RECIPE: the overlay side again per ABLATE set, then each against the recipe's baseline results
  local recipe=$1 ops A left sets
  IFS=';' read -ra sets <<< "${ABLATE:-}"
  for ops in "${sets[@]}"; do
    left=$(( DEADLINE - 15 - ($(date +%s) - START) ))
    (( left < 90 )) && { echo "SKIPPED (deadline): $recipe --ops $ops" | tee -a "$R/skipped.txt"; continue; }
    A="$R/$recipe.ops-${ops//,/+}"; mkdir -p "$A"
    echo "=== [$left s left] speedrun run $recipe --ops $ops ${RUN_ARGS:-}"
    timeout "$left" speedrun run "$recipe" --out "$A" --sides overlay --ops "$ops" ${RUN_ARGS:-} --no-progress 2>&1 \
      | tee "$A.log" | tail -n 25
  done
  for A in "$R/$recipe".ops-*/; do  # ablations against the baseline, whichever call ran them
    [ -f "$A/overlay.json" ] && [ -f "$R/$recipe/baseline.json" ] || continue
    cp "$R/$recipe/baseline.json" "$A/"
    echo "=== speedrun compare: $A"
    speedrun compare "$A/baseline.json" "$A/overlay.json" --out "$A" 2>&1 | tee -a "$A/compare.log" | tail -n 12
  done
}
for recipe in "$@"; do
  left=$(( DEADLINE - 15 - ($(date +%s) - START) ))   # 15 s kept for the tarball
  (( left < 90 )) && { echo "SKIPPED (deadline): $recipe" | tee -a "$R/skipped.txt"; continue; }
  [ "${SIDES:-}" = none ] && { ablate "$recipe"; continue; }  # SIDES=none ABLATE=...: only the ablations
  echo "=== [$left s left] speedrun run $recipe ${RUN_ARGS:-}"
  # FlashMLA's prefill is FlashInfer's, JIT-compiled into ~/.cache/flashinfer on first use (~100 s on a fresh
  # machine): whichever side starts first pays it, so each server's start is read with this line beside it
  echo "flashinfer JIT cache before $recipe: $(find ~/.cache/flashinfer -name '*.so' 2>/dev/null | wc -l) .so," \
    "$(du -sh ~/.cache/flashinfer 2>/dev/null | cut -f1)" \
    | tee -a "$R/$recipe.jit_cache.txt"
  # SIGTERM from timeout: speedrun tears its server down and keeps the partial results
  timeout "$left" speedrun run "$recipe" --out "$R/$recipe" ${SIDES:+--sides "$SIDES"} ${RUN_ARGS:-} --no-progress 2>&1 \
    | tee "$R/$recipe.log" | tail -n 45
  echo "flashinfer JIT cache after $recipe: $(du -sh ~/.cache/flashinfer 2>/dev/null | cut -f1)" \
    | tee -a "$R/$recipe.jit_cache.txt"
  # When each Triton kernel compiled (its cache's metadata files, by time; the server logs carry wall clock): a
  # compile after the server's start is one the load-time warm-up missed
  find "${TRITON_CACHE_DIR:-$HOME/.triton/cache}" -name '*.json' ! -name '__grp__*' -printf '%TT %f\n' 2>/dev/null \
    | sort > "$R/$recipe.triton_compiles.txt"
  ablate "$recipe"
done
nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader | sed 's/^/left on the GPU: /'
# A decode profile's traces are deleted once summarized: one still here was cut short by the deadline (tens of MB,
# often unreadable) and would push the tarball past what a call returns (16 MiB a file): listed, not sent
find "$R" -path '*/profile/*' -type f -printf 'left out (an interrupted profile): %p, %s B\n'
tar czf "$OUT/e2e.tgz" --exclude='*/profile/*' "$R"
