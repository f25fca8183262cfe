# Source at the start of every device command (repo root, `.gpu-bundle` and `.models` carried):
# unpacks the offline SGLang 0.5.17 bundle, puts it on sys.path, installs this project (entry points).
bash .gpu-bundle/install.sh && source .gpu-bundle/env.sh && \
  { [ ! -f .gpu-bundle/deepgemm.tar.xz ] || [ -d /tmp/sgl/site/deep_gemm ] || tar -xJf .gpu-bundle/deepgemm.tar.xz -C /tmp/sgl/site; } && \
  python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >/dev/null 2>&1 || { echo "setup failed"; return 1; }
export PYTHONUNBUFFERED=1 OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
