#!/usr/bin/env bash
# Multi-GPU proof (issue #10) in one device call, inside a deadline (default 570 s):
#   1. at least NGPU GPUs; NVLink multicast off in the launcher's env (dry run) and in every SGLang process
#      (a watcher reads /proc/PID/environ while the servers run);
#   2. `speedrun run` at TP=NGPU, stock vs overlay, scaled down (concurrency 4,32): throughput + agreement;
#   3. one overlay report per rank with calls > 0 for each of the recipe's ops;
#   4. (phase tp1) the same model at TP=1 with overlays, compared with the TP=NGPU overlay side.
# Results come back as $OUT/multi_gpu.tgz (+ summary.txt); exit 1 when a check fails.
#   device: bash scripts/device/multi_gpu.sh 2 recipes/synth-deepseek-tp2-h200x2.yaml run,tp1  (carry .gpu-bundle)
set -uo pipefail
NGPU=${1:-2}; RECIPE=${2:-recipes/synth-deepseek-tp2-h200x2.yaml}; PHASES=${3:-run,tp1}
source "${SETUP:-scripts/device/setup.sh}" || exit 1   # SETUP=/dev/null: a CPU rehearsal of the flow
START=$(date +%s); DEADLINE=${DEADLINE:-570}
M=/tmp/multi_gpu; rm -rf "$M"; mkdir -p "$M"; LOG=$M/log.txt; FAILS=0
left() { echo $(( DEADLINE - ($(date +%s) - START) )); }
note() { echo "$*" | tee -a "$LOG" "$M/summary.txt"; }
step() {  # step SECONDS NAME COMMAND...: run under a timeout capped by the time left; a failure is counted
  local t=$1 name=$2; shift 2; local l; l=$(left)
  (( l < 30 )) && { note "SKIPPED (deadline) $name"; FAILS=$((FAILS + 1)); return 1; }
  (( t > l - 15 )) && t=$(( l - 15 )); echo "=== [$(left)s left] $name: $*" | tee -a "$LOG"
  timeout "$t" "$@" > >(tee -a "$LOG" "$M/$name.txt" | tail -n 25) 2>&1; local rc=$?
  note "$( ((rc == 0)) && echo PASS || echo "FAIL rc=$rc") $name"; ((rc == 0)) || FAILS=$((FAILS + 1)); return $rc
}
finish() {
  [[ -n ${WATCH:-} ]] && kill "$WATCH" 2>/dev/null
  note "multi_gpu: $FAILS failing step(s), $(( $(date +%s) - START )) s"
  cp "$M/summary.txt" "$OUT/summary.txt"; tar czf "$OUT/multi_gpu.tgz" -C /tmp multi_gpu; exit $(( FAILS > 0 ))
}
watch_env() {  # every SGLang process seen: its pid/cmdline and the multicast variables it was started with
  while sleep 2; do
    for p in $(pgrep -f "sglang" || true); do
      grep -q "^== $p " "$M/env_seen.txt" 2>/dev/null && continue
      cmd=$(tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | cut -c1-120) || continue
      [[ $cmd == *multi_gpu.sh* || -z $cmd ]] && continue
      { echo "== $p $cmd"; tr '\0' '\n' < "/proc/$p/environ" 2>/dev/null |
          grep -E '^(NCCL_NVLS_ENABLE|TORCH_SYMM_MEM_DISABLE_MULTICAST|NVSHMEM_DISABLE_NVLS)='; } >> "$M/env_seen.txt"
    done
  done
}

nvidia-smi -L | tee "$M/gpus.txt"; nvidia-smi topo -m > "$M/topo.txt" 2>&1
env | grep -E '^(NCCL_NVLS_ENABLE|TORCH_SYMM_MEM_DISABLE_MULTICAST|NVSHMEM_DISABLE_NVLS)=' | tee "$M/host_env.txt"
HAVE=$(grep -c '^GPU ' "$M/gpus.txt"); note "GPUs: $HAVE (need $NGPU); recipe $RECIPE; phases $PHASES"
(( HAVE >= NGPU )) || { note "FAIL only $HAVE GPU(s), $NGPU needed"; FAILS=1; finish; }
R=$M/recipe-tp$NGPU.yaml; T1=$M/recipe-tp1.yaml   # the recipe at TP=NGPU and at TP=1: same model and seed
python3 -m speedrun.eval.readiness.ranks derive "$RECIPE" --tp "$NGPU" --out "$R" || { FAILS=1; finish; }
python3 -m speedrun.eval.readiness.ranks derive "$RECIPE" --tp 1 --out "$T1" || { FAILS=1; finish; }
OPS=$(python3 -c "from speedrun.recipe import load_recipe as l; print(','.join(l('$R').overlays.enabled_ops()))")
speedrun model synth "$R" | tee -a "$LOG"
speedrun launch "$R" --dry-run > "$M/dry_run.txt"; cat "$M/dry_run.txt" >> "$LOG"
watch_env & WATCH=$!
SCALE=(--concurrency 4,32 --isl 1024 --osl 128 --prompts-per-concurrency 2 --warmup-per-concurrency 1
       --startup-timeout 300 --no-progress)
if [[ ,$PHASES, == *,run,* ]]; then
  step 380 run speedrun run "$R" --out "$M/run" "${SCALE[@]}"
  step 20 ranks python3 -m speedrun.eval.readiness.ranks reports "$M/run/overlay.json" --tp "$NGPU" --ops "$OPS"
  speedrun report "$M/run/overlay/overlay-reports" >> "$LOG" 2>&1
fi
if [[ ,$PHASES, == *,tp1,* ]]; then  # agreement across sharding: TP=1 (A) vs TP=NGPU (B), overlays on both
  step 200 tp1_eval speedrun eval "$T1" --side overlay --out "$M/tp1" --startup-timeout 300 --no-progress
  speedrun compare "$M/tp1/overlay.json" "$M/run/overlay.json" --out "$M/tp1_vs_tp$NGPU" >> "$LOG" 2>&1  # gates
  step 10 tp1_vs_tpN python3 -m speedrun.eval.readiness.ranks gate "$M/tp1_vs_tp$NGPU/summary.json"  # agreement
fi
kill "$WATCH" 2>/dev/null; WATCH=
step 10 env python3 -m speedrun.eval.readiness.ranks env "$M/env_seen.txt" --dry-run "$M/dry_run.txt"
finish
