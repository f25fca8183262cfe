#!/usr/bin/env bash
# A normal install works, not only an editable one (issue 17): build the wheel from what git would ship, install
# it (not editable) into a clean venv, and run the CLI from a folder outside the repo, so recipes, patches and
# model configs can only come from the installed package.
#   bash scripts/wheel_check.sh     # with the project's environment active (scripts/test.sh runs it)
# Fast and offline: nothing is downloaded; the new venv reuses the active environment's packages.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d "${TMPDIR:-/tmp}/speedrun-wheel.XXXXXX")
trap 'rm -rf "$work"' EXIT
say() { echo "wheel check: $*"; }
die() { say "FAILED: $*" >&2; exit 1; }

sglang_init=$(python -c "import importlib.util as u; s = u.find_spec('sglang'); print(s.origin if s else '')")
[ -n "$sglang_init" ] || die "sglang's source is not installed here (pip install --no-deps sglang==0.5.17)"
sglang_src=$(dirname "$(dirname "$sglang_init")")  # the folder holding sglang/

# Build from a copy of the tracked (and new, not ignored) files: no .venv, no stale build/ of the checkout.
mkdir "$work/src"
git ls-files -z --cached --others --exclude-standard |
  tar --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -xf - -C "$work/src"
# The active environment's setuptools builds the wheel when it can (>= 70.1, or any with `wheel`); else pip
# fetches the build backend itself, as `pip install` did.
isolation=--no-build-isolation
python -c "import setuptools.command.bdist_wheel" 2>/dev/null || python -c "import wheel" 2>/dev/null || isolation=
python -m pip wheel -q --no-deps $isolation -w "$work/dist" "$work/src"

# Dependencies come from the active environment as plain sys.path entries: its .pth files are not run, so its
# editable install of speedrun stays out of the way and only the wheel's copy can be imported.
python -m venv --without-pip "$work/venv"  # the active pip installs into it (--python)
py=$work/venv/bin/python
purelib=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
python -m pip --python "$py" install -q --no-deps --no-index "$work"/dist/sglang_speedrun-*.whl
# (after the install: pip must not see, let alone touch, the active environment's sglang-speedrun)
python -c "import sys; print(*[p for p in sys.path if p.endswith(('site-packages', 'dist-packages'))], sep='\n')" \
  >"$purelib/_speedrun_deps.pth"

mkdir "$work/run" && cd "$work/run"
export PYTHONPATH="" COLUMNS=80
"$py" -c "import speedrun; assert speedrun.__file__.startswith('$purelib'), speedrun.__file__" ||
  die "speedrun is not imported from the installed wheel"
run() { echo "-- speedrun $*"; "$work/venv/bin/speedrun" "$@" 2>&1; }
out=$(run recipes list) && grep -q " synth-deepseek-h100 " <<<"$out" || die "recipes list: $out"
out=$(run launch synth-gpt-oss-h100 --dry-run) && grep -q "sglang.launch_server" <<<"$out" || die "launch: $out"
run model synth synth-deepseek-h100 --root "$work/models"
[ -s "$work/models/synth-deepseek-v3-tp8-l4-bf16/config.json" ] || die "model synth wrote no config.json"
run patch check --target "$sglang_src"
"$py" -c "from speedrun.overlays.arch import ARCHS, load_configs
[load_configs(op, a) for op in ('mla_decode', 'mxfp4_moe', 'mxfp4_gemm') for a in ARCHS]" ||
  die "the overlays' per-arch configs are missing from the wheel"
out=$(run kernels roofline) && die "kernels roofline outside the repo must fail (docs/ is not packaged): $out"
grep -q -- "--results" <<<"$out" || die "kernels roofline: the error does not name --results: $out"
say "ok (the installed wheel serves recipes, patches and model configs outside the repo)"
