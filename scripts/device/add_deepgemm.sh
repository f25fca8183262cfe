#!/usr/bin/env bash
# Stock SGLang 0.5.17 serves DeepSeek's FP8 block linears on an H100 with DeepGEMM (sgl-deep-gemm, a dependency of
# sglang 0.5.17); the shared GPU bundle lacks it, and without it stock falls back to its slower Triton FP8 GEMM:
# a weaker baseline than real stock. This adds it to .gpu-bundle as deepgemm.tar.xz (~1.9 MB, xz of the wheel's
# files: it fits the 64 MiB carry beside the bundle). scripts/device/setup.sh unpacks it when present.
#   bash scripts/device/add_deepgemm.sh [BUNDLE_DIR]     # default .gpu-bundle; needs PyPI
# It also recompresses the bundle's site.tar.xz with xz -9e once (45.5 -> 44.0 MB, ~4 minutes on 2 cores): the
# repo's tracked files travel too, and bundle + DeepGEMM + tree come close to the 64 MiB carry.
set -euo pipefail
OUT=${1:-.gpu-bundle}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 -d "$T" "sgl-deep-gemm==0.1.5.post1" 2>&1 | grep -v "is ignored" || true
(cd "$T" && python3 -m zipfile -e sgl_deep_gemm-*.whl x && tar -C x -cJf "$OLDPWD/$OUT/deepgemm.tar.xz" deep_gemm)
if [ ! -f "$OUT/.site-xz9" ]; then
  xz -dc "$OUT/site.tar.xz" | xz -9e -T2 > "$T/site.tar.xz" && mv "$T/site.tar.xz" "$OUT/site.tar.xz" && touch "$OUT/.site-xz9"
fi
ls -la "$OUT"
