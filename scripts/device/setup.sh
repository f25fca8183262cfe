# Source at the start of every device command (repo root, `.gpu-bundle` and `.models` carried):
# unpacks the offline SGLang 0.5.17 bundle, puts it on sys.path, installs this project (entry points).
bash .gpu-bundle/install.sh && source .gpu-bundle/env.sh && \
  { [ ! -f .gpu-bundle/deepgemm.tar.xz ] || [ -d /tmp/sgl/site/deep_gemm ] || tar -xJf .gpu-bundle/deepgemm.tar.xz -C /tmp/sgl/site; } && \
  python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >/dev/null 2>&1 || { echo "setup failed"; return 1; }
# Stock's DeepSeek FP8 server spent 430 s of a 520 s call in DeepGEMM's pre-compile: at the first call of each FP8
# GEMM shape, sglang 0.5.17 (deep_gemm_wrapper/compile_utils.py) runs DeepGEMM for every M in 1..16384 (chunked
# prefill 8192, the H100 default). sgl-deep-gemm 0.1.5.post1 has no compile-only mode, so each M is a real GEMM,
# plus one NVCC compile per kernel config met. FAST_WARMUP=1 walks 2560 of those Ms: all of 1..1024, then steps of
# 2/4/8 up to the chunk (8192). It changes no kernel: M is a runtime argument of the sm90 FP8 kernel and DeepGEMM
# picks each call's config (block sizes, multicast, SM count) from M, N, K alone, warm-up or not. Nor should it let
# a compile into the benchmark's measured window: serving Ms are decode batches (<= cuda_graph_max_bs) and prefill
# chunks (<= 8192), and in DeepGEMM's sm90 heuristic (its public source; this wheel ships it compiled) M enters
# only as ceil(M / block_m), block_m 64/128/256, and M >= 512: every config an M <= 8192 can pick is met by a
# sampled M (steps of <= 8 inside every 64-row band). What it skips: the GEMMs of the other Ms and the kernels only
# M > 8192 reaches. Not yet measured on the card: scripts/device/deepgemm_warmup.py times both lists and lists
# the Ms whose kernel the fast list missed (`missed_within_chunk` must be empty, else unset this). Not chosen
# instead: a persistent SGLANG_DG_CACHE_DIR carried between calls: the bundle (~55.4 MiB), the model folders (~1.1
# MiB) and the tree (~4.2 MiB since result data is packed) leave ~3 MiB of the 64 MiB carry, little for tens of
# cubins (size unmeasured, estimated at 100 KB or more each), and it would save the compiles but not the GEMMs.
# The launcher passes this environment to every server it starts (launch/command.py merged_env).
export SGLANG_JIT_DEEPGEMM_FAST_WARMUP=${SGLANG_JIT_DEEPGEMM_FAST_WARMUP:-1}
# Without DeepGEMM stock SGLang serves DeepSeek's FP8 linears with its Triton FP8 GEMM: a weaker baseline than real
# stock, and the GEMM bench loses its fp8_deepgemm rows. Say so at the top of every log.
[ -f .gpu-bundle/deepgemm.tar.xz ] || echo "WARNING: no DeepGEMM in .gpu-bundle (run scripts/device/add_deepgemm.sh): stock's FP8 GEMM baselines are weaker than real stock's"
require_deepgemm() {  # servers of stock's side (e2e.sh, baseline.sh) must be stock at its strongest
  [ -f .gpu-bundle/deepgemm.tar.xz ] || [ -n "${ALLOW_NO_DEEPGEMM:-}" ] && return 0
  echo "$1: .gpu-bundle has no DeepGEMM (scripts/device/add_deepgemm.sh adds it); ALLOW_NO_DEEPGEMM=1 runs anyway"
  return 2
}
export PYTHONUNBUFFERED=1 OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
