"""speedrun.eval.kernels: what the op microbenchmarks share — one GPU timer, the speedup report, and the set-up
that lets a bench call stock SGLang's kernels outside a server."""

# Where each op's microbenchmark (`main(argv)`, `--sweep` for tuning) and AOT compile specs (`compile_specs(arch)`)
# live.
BENCH = {
    "mla_decode": "speedrun.eval.kernels.mla_decode_bench",
    "mxfp4_moe": "speedrun.eval.kernels.mxfp4_moe_bench",
    "mxfp4_gemm": "speedrun.eval.kernels.mxfp4_gemm_bench",
}
COMPILE = {
    "mla_decode": "speedrun.eval.kernels.mla_decode_compile",
    "mxfp4_moe": "speedrun.eval.kernels.mxfp4_moe_compile",
    "mxfp4_gemm": "speedrun.eval.kernels.mxfp4_gemm_compile",
}
