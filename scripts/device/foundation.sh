#!/usr/bin/env bash
# Foundation proof on the GPU host: the plugin live in SGLang's scheduler, a synthetic DeepSeek recipe
# launched with overlays on and with --baseline (one request each, per-process reports kept).
#   device: bash scripts/device/foundation.sh   (carry .gpu-bundle and .models)
set -uo pipefail
source scripts/device/setup.sh || exit 1
R=.runs/foundation
speedrun doctor 2>&1 | tee "$R-doctor.txt"
for recipe in ${RECIPES:-synth-deepseek-h100}; do
  for side in --baseline ""; do
    echo "=== $recipe ${side:-overlay}"
    timeout 420 speedrun launch "$recipe" $side --check --out "$R" --timeout 400 --port 30000 2>&1 | tail -n 40
  done
done
mkdir -p "$R" && mv "$R-doctor.txt" "$R/"
tar czf "$OUT/foundation.tgz" "$R"
