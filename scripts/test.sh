#!/usr/bin/env bash
# The project's test command (README; CI runs it through .ci/run). CPU only: GPU tests are skipped.
#   bash scripts/test.sh            # fresh venv in .venv, install, ruff, every CPU test
#   SPEEDRUN_NO_VENV=1 bash scripts/test.sh   # use the current Python environment as it is
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${SPEEDRUN_NO_VENV:-}" ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  # shellcheck disable=SC1091
  . .venv/bin/activate
  pip() { python -m pip "$@"; }
  pip install -q --upgrade pip >/dev/null
  # A CPU build of torch is all the tests need (the serving stack pins torch 2.11.0 on GPU machines).
  # Where no CPU wheel is offered, pip takes the default build; any torch >= 2.11 runs the tests.
  python -c "import torch" 2>/dev/null || pip install -q "torch==2.13.0" || pip install -q "torch>=2.11"
  pip install -q -e ".[dev]"
  # SGLang's real source, for the hook-target, plugin and patch tests: the wheel without its GPU stack.
  python -c "import importlib.util as u; exit(u.find_spec('sglang') is None)" || \
    pip install -q --no-deps "sglang==0.5.17"
fi

# The support matrix (README): SGLang's real source for every version with a series in patches/, the wheels
# without their GPU stack, unpacked into a cache that tests/test_support_matrix.py reads (under CI a missing
# one fails there; elsewhere those tests skip).
export SPEEDRUN_SGLANG_SOURCES=${SPEEDRUN_SGLANG_SOURCES:-${XDG_CACHE_HOME:-$HOME/.cache}/speedrun/sglang-src}
echo "== sglang sources of the support matrix -> $SPEEDRUN_SGLANG_SOURCES"
for series in patches/sglang-*/series; do
  v=${series#patches/sglang-}; v=${v%/series}
  [ -f "$SPEEDRUN_SGLANG_SOURCES/$v/sglang/_version.py" ] && continue
  python -c "import importlib.metadata as m; exit(m.version('sglang') != '$v')" 2>/dev/null && continue  # installed
  wheels="$SPEEDRUN_SGLANG_SOURCES/wheels"
  python -m pip download -q --no-deps "sglang==$v" -d "$wheels" \
    && python -m zipfile -e "$(ls "$wheels"/sglang-"$v"-*.whl | head -n1)" "$SPEEDRUN_SGLANG_SOURCES/$v" \
    || echo "could not fetch sglang $v (no network?): its support-matrix tests will not run"
done

echo "== ruff"
ruff check .
ruff format --check . || echo "(ruff format: files above would be reformatted; style only)"
echo "== wheel check (a built wheel, installed non-editable, runs outside the repo)"
bash scripts/wheel_check.sh
# The readiness gate: every kernel x config compiles for gfx950 and sm90 with its expected MMA, no spill to
# memory, and fits (issue 8).
GATED_OPS=${GATED_OPS:-"mla_decode mxfp4_gemm mxfp4_moe"}
echo "== speedrun kernels compile --arch all --op {$GATED_OPS} (gfx950 + sm90, AOT on this CPU)"
speedrun kernels compile --arch all $(printf -- '--op %s ' $GATED_OPS) --json > /tmp/speedrun-compile.json \
  || { speedrun kernels compile --arch all $(printf -- '--op %s ' $GATED_OPS); exit 1; }
python -c "import json; d=json.load(open('/tmp/speedrun-compile.json')); print(len(d['rows']), 'kernel x config rows compiled,', d['failed'], 'failed')"
# The same kernels under the next Tritons (3.7: SGLang 0.5.18-0.5.21's torch 2.13; 3.8: 0.5.22-0.5.23's torch
# 2.14), each in its own folder on PYTHONPATH. Registers, instructions and machine code that changed against the
# Triton 3.6 run above are reported; a compile error, a spill to memory or a missing MMA fails, except the ones the
# committed report of that Triton already has (docs/results/readiness/README.md says which and why).
# SPEEDRUN_NO_TRITON_NEXT=1 skips this step.
if [ -z "${SPEEDRUN_NO_TRITON_NEXT:-}" ]; then
  for tv in 3.7 3.8; do
    tdir="${XDG_CACHE_HOME:-$HOME/.cache}/speedrun/triton-$tv"
    [ -f "$tdir/triton/__init__.py" ] || python -m pip install -q --no-deps --target "$tdir" "triton==$tv.*"
    echo "== speedrun kernels compile --arch all under Triton $(PYTHONPATH="$tdir" python -c 'import triton; print(triton.__version__)')"
    next_json=$(mktemp)
    # its own exit status is 1 on the known spills: compile_delta below judges the rows
    PYTHONPATH="$tdir" speedrun kernels compile --arch all $(printf -- '--op %s ' $GATED_OPS) --json > "$next_json" || true
    python -m speedrun.compile_delta /tmp/speedrun-compile.json "$next_json" --title "Triton $tv vs 3.6" \
      --accept "docs/results/readiness/compile_report_triton${tv/./}.json.gz"
    rm -f "$next_json"
  done
fi
echo "== pytest (CPU)"
set +e
python -m pytest -q -m "not gpu" --timeout=1800 "$@"
rc=$?
set -e
[ "$rc" -eq 5 ] && { echo "pytest collected no tests: that is a failure here"; exit 1; }
exit "$rc"
