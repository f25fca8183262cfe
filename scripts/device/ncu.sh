#!/usr/bin/env bash
# Nsight Compute on the served kernels of a few bench cases, ours next to stock's at the same shape: speed of
# light, memory, occupancy, warp stall reasons, and the per-instruction stall samples (SASS source page), the
# evidence the MLA / MoE next rounds are planned on. Results: $OUT/ncu.tgz (one .txt and one .csv per case).
#   device: bash scripts/device/ncu.sh                 (carry .gpu-bundle)
#   CASES="mla:fp8:256:8192:speedrun" DEADLINE=200 bash scripts/device/ncu.sh
set -uo pipefail
source scripts/device/setup.sh || exit 1
START=$(date +%s); DEADLINE=${DEADLINE:-300}
N=/tmp/ncu; mkdir -p "$N"
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | tail -1)
[ -x "$NCU" ] || { echo "ncu not found"; exit 1; }
# Counters are readable on some of the lent machines only (KINDS.md: not under gVisor): a 1-kernel probe first, so a
# machine without them costs seconds, not the whole deadline.
"$NCU" --clock-control none --metrics gpu__time_duration.sum python3 -c \
  "import torch; torch.ones(1, device='cuda').add_(1); torch.cuda.synchronize()" > "$N/probe.log" 2>&1
grep -q "gpu__time_duration" "$N/probe.log" || { echo "ncu cannot read counters here:"; tail -n 5 "$N/probe.log"; exit 0; }
SECTIONS=(SpeedOfLight MemoryWorkloadAnalysis Occupancy LaunchStats WarpStateStats SchedulerStats
          ComputeWorkloadAnalysis InstructionStats SourceCounters)
# most wanted first: a deadline drops the tail
CASES=${CASES:-"mla:fp8:32:8192:speedrun mla:fp8:32:8192:flashmla moe:deepseek-r1-mxfp4-tp8:32:speedrun
  moe:gpt-oss-120b:32:speedrun mla:fp8:256:8192:speedrun mla:bf16:256:8192:speedrun
  moe:gpt-oss-120b:32:triton_kernels moe:deepseek-r1-mxfp4-tp8:32:fp8_fused_moe mla:fp8:256:8192:flashmla
  gemm:64:7168:2048:speedrun gemm:64:7168:2048:fp8_deepgemm"}
for c in $CASES; do
  left=$(( DEADLINE - ($(date +%s) - START) )); (( left < 25 )) && { echo "SKIPPED (deadline): $c"; continue; }
  name=${c//:/_}; echo "=== [${left}s left] $c"
  # kernels of the profiled calls only (profile-from-start off), at most 12 launches; clocks left alone
  timeout "$left" "$NCU" --profile-from-start off --clock-control none --launch-count 12 \
    $(printf -- '--section %s ' "${SECTIONS[@]}") --import-source no -o "$N/$name" -f \
    python3 scripts/device/ncu_case.py "$c" > "$N/$name.log" 2>&1
  tail -n 3 "$N/$name.log"
  [ -f "$N/$name.ncu-rep" ] || continue
  "$NCU" -i "$N/$name.ncu-rep" --page details > "$N/$name.txt" 2>&1
  "$NCU" -i "$N/$name.ncu-rep" --page source --print-source sass --csv > "$N/$name.sass.csv" 2>&1
  # where the stall samples sit, per warp-specialized partition and instruction (small enough to commit)
  python3 scripts/device/ncu_sass_top.py 25 < "$N/$name.sass.csv" > "$N/$name.sass_top.txt" 2>&1
  # the stall breakdown per kernel (cycles per issued instruction by reason), which the details page summarizes
  "$NCU" -i "$N/$name.ncu-rep" --page raw --csv 2>/dev/null | python3 scripts/device/ncu_stalls.py > "$N/$name.stalls.txt"
  cat "$N/$name.stalls.txt"
  grep -E "^  [A-Za-z_].*\(|Duration|DRAM Throughput|Memory Throughput|Registers Per|Achieved Occupancy|Warp Cycles Per Issued|Issue Slots Busy" \
    "$N/$name.txt" | head -40
  rm -f "$N/$name.ncu-rep"   # the text pages carry what is read later; the report is large
done
ls -la "$N"; tar czf "$OUT/ncu.tgz" -C /tmp ncu
