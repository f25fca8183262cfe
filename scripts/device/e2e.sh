#!/usr/bin/env bash
# End-to-end runs on the GPU host inside one device call: `speedrun run` per recipe (baseline, the agreement
# control when the recipe has one, overlay), under a deadline; every run folder comes back in $OUT/e2e.tgz.
#   device: RUN_ARGS="--concurrency 4,32 --isl 1024 --osl 256" bash scripts/device/e2e.sh RECIPE [RECIPE...]
#   (carry .gpu-bundle and .models)
#   SIDES=baseline ... then SIDES=control,overlay ...: one long run split over calls on a warm machine (the run
#   folder .runs/e2e/RECIPE stays there between calls; the report is written by the call that completes it)
set -uo pipefail
source scripts/device/setup.sh || exit 1
START=$(date +%s); DEADLINE=${DEADLINE:-570}; R=.runs/e2e
mkdir -p "$R"
for recipe in "$@"; do
  left=$(( DEADLINE - 15 - ($(date +%s) - START) ))   # 15 s kept for the tarball
  (( left < 90 )) && { echo "SKIPPED (deadline): $recipe" | tee -a "$R/skipped.txt"; continue; }
  echo "=== [$left s left] speedrun run $recipe ${RUN_ARGS:-}"
  # SIGTERM from timeout: speedrun tears its server down and keeps the partial results
  timeout "$left" speedrun run "$recipe" --out "$R/$recipe" ${SIDES:+--sides "$SIDES"} ${RUN_ARGS:-} --no-progress 2>&1 \
    | tee "$R/$recipe.log" | tail -n 45
done
nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader | sed 's/^/left on the GPU: /'
tar czf "$OUT/e2e.tgz" "$R"
