#!/usr/bin/env bash
# `speedrun baseline` on the GPU host, split over device calls: each call serves the named stock candidates and
# adds them to the search folder; a search folder from an earlier call travels back in (carry .baseline-runs).
#   here:   echo /.baseline-runs/ >> .git/info/exclude   (once)
#   device: CANDIDATES=recipe,flashmla-p64 bash scripts/device/baseline.sh RECIPE [ARGS...]
#           (carry .gpu-bundle, .models and .baseline-runs; ARGS go to speedrun baseline, e.g. --no-moe --isl 2048)
#   here:   tar xzf <files_at>/baseline.tgz   (the folder, updated, for the next call and for docs/results)
# The folder holds JSON, markdown and trimmed server logs only (the carry limit is 64 MiB with the bundle).
set -uo pipefail
source scripts/device/setup.sh || exit 1
require_deepgemm baseline.sh || exit 2  # every candidate is stock at its strongest: DeepGEMM on CUDA
recipe=$1; shift
R=.baseline-runs/$recipe
mkdir -p "$R"
echo "=== speedrun baseline $recipe --out $R ${CANDIDATES:+--candidates $CANDIDATES} $*"
timeout "${LIMIT:-540}" speedrun baseline "$recipe" --out "$R" ${CANDIDATES:+--candidates "$CANDIDATES"} --no-progress "$@" \
  2>&1 | tee "$R/call-$(date +%H%M%S).log" | tail -n 40
for log in "$R"/candidates/*/server.log; do  # keep the carry small: a server log's head and tail tell its story
  [ -f "$log" ] && python3 scripts/trim_log.py "$log" > "$log.trim" && mv "$log.trim" "$log"
done
tar czf "$OUT/baseline.tgz" .baseline-runs
