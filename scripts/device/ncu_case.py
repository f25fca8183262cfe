"""One kernel-bench case, run for Nsight Compute: warm up (compiles, autotuning), then REPEATS calls between
cudaProfilerStart/Stop, so `ncu --profile-from-start off` profiles only the served kernels of those calls.

    device: source scripts/device/setup.sh && bash scripts/device/ncu.sh     (runs every case in CASES)
    by hand: ncu --profile-from-start off ... python3 scripts/device/ncu_case.py mla:fp8:32:8192:speedrun

Case grammar: `mla:<bf16|fp8>:<bs>:<kv_len>:<impl>` (impls of eval/kernels/mla_decode_bench.py, or
`variant=<name>`: ours with a sweep variant's config),
`moe:<model>:<M>:<impl>` (models and impls of eval/kernels/mxfp4_moe_bench.py) or `gemm:<M>:<N>:<K>:<impl>`
(impls of eval/kernels/mxfp4_gemm_bench.py: speedrun, fp8_deepgemm, bf16_cublas, ...). The inputs are the benches'
own kind.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch

REPEATS = 2


def mla_case(dtype: str, bs: str, kv_len: str, impl: str) -> Callable[[], object]:
    from speedrun.eval.kernels import mla_decode_bench as mla

    kv_dtype = {"bf16": torch.bfloat16, "fp8": torch.float8_e4m3fn}[dtype]
    x = mla.make_inputs(int(bs), int(kv_len) if kv_len.isdigit() else kv_len, kv_dtype)
    if impl.startswith("variant="):  # ours with one sweep variant's config, e.g. variant=gluon_ws
        return mla.setup_speedrun(x, mla.variant_config(impl.removeprefix("variant=")))
    return mla.SETUP[impl](x)


def moe_case(model_name: str, m: str, impl: str) -> Callable[[], object]:
    from speedrun.eval.kernels import mxfp4_moe_bench as moe

    model = moe.MODELS[model_name]
    e, _, h, n, a4 = model[:5]
    raw = moe.make_raw(e, h, n, gptoss=not a4)
    prepare, run = moe.impl_builders(model, allow_jit=True)[impl](raw)
    s = moe.routing_set(int(m), model, 0)
    state = prepare(s["ids"], s["tw"], s["logits"])
    return lambda: run(s["x"], state)


def gemm_case(m: str, n: str, k: str, impl: str) -> Callable[[], object]:
    from speedrun.eval.kernels import mxfp4_gemm_bench as gemm

    a, w, ws = gemm.operands(int(m), int(n), int(k), seed=0)
    ops, fn = gemm.prepare(impl, a, w, ws, gemm._lut(a.device))
    return lambda: fn(*ops)


def main(case: str) -> int:
    op, *fields = case.split(":")
    fn = {"mla": mla_case, "moe": moe_case, "gemm": gemm_case}[op](*fields)
    for _ in range(3):  # compiles and autotunes outside the profiled range
        fn()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    for _ in range(REPEATS):
        fn()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()
    print(f"{case}: profiled {REPEATS} calls")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
