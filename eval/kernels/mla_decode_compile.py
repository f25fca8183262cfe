"""AOT compile specs for the MLA decode kernels: per config bucket, the partial kernel for bf16 and fp8 KV
(it must use the matrix unit), for fp8 KV also the a8w8 kernel with fp8 and with f16 PV (it must use the fp8
matrix instructions; on gfx950 with >= 2 waves per SIMD and no spills), on sm90 the Gluon a8w8 kernels (heads <= 16:
gluon_sm90.py and its warp-specialized form), the merge kernel, the decode step's fp8 KV store, and at 16 heads the
partial kernel for an MXFP4 cache."""

from __future__ import annotations

import torch

from speedrun.eval.kernels.aot import CompileSpec, aligned
from speedrun.overlays.arch import is_amd, pdl_ok
from speedrun.overlays.buckets import parse
from speedrun.overlays.mla_decode import api
from speedrun.overlays.mla_decode.config import Compute, Engine, MlaBucket, Pv
from speedrun.overlays.mla_decode.kernels import D_LATENT, D_QK, D_ROPE, _kv_store_kernel, _mla_merge_kernel

KV_TYPES = {"bf16": "*bf16", "fp8": "*fp8e4nv"}  # fp8 e4m3fn (OCP): sm90 and gfx950 both take it
KV_TORCH = {"bf16": torch.bfloat16, "fp8": torch.float8_e4m3fn}
A8W8_PV = (Pv.FP8, Pv.F16)
EXPECT_MMA = {"sm90": r"mma\.sync|wgmma", "gfx950": r"v_mfma"}
# a8w8 must really compute in fp8 (Triton silently upcasts fp8 dots it cannot map, e.g. mma.sync on sm90):
# sm90 wgmma ... .e4m3.e4m3; gfx950 an fp8 MFMA (v_mfma_f32_*_fp8_fp8, or the f8f6f4 forms).
EXPECT_FP8_MMA = {"sm90": r"wgmma\.mma_async[\w.]*\.e4m3\.e4m3", "gfx950": r"v_mfma_\w*(?:fp8_fp8|f8f6f4)"}
GLUON_A8W8 = {"engine": "gluon", "mma_m": "tokens", "pv": "f16", "BLOCK_N": 64, "num_warps": 8, "num_stages": 2}
GLUON_WS = {**GLUON_A8W8, "engine": "gluon_ws", "pipe_pv": None, "cvt_rows": None}
GLUON_WS_LAZY = {**GLUON_WS, "lazy_max": True}  # sweep row gluon_ws_lazy
GLUON_KV16 = {"kv16_engine": "gluon", "BLOCK_N": 64, "num_warps": 8, "num_stages": 2}
TRITON = {"engine": "triton"}  # the a8w8 knobs on the Triton kernel
A8W8_MIN_WAVES = {"gfx950": 2}  # waves per SIMD: one wave per SIMD leaves nothing to hide HBM latency with
PARTIAL_ARGS = ["Q", "KV", "O", "PartO", "PartLse", "kv_indptr", "kv_indices"]  # aligned (Chunk: one int32)
SCALARS = {"qk_scale": "fp32", "v_scale": "fp32", "bs": "i32", "num_programs": "i32"}
STRIDES = ["stride_qb", "stride_qh", "stride_kv_page", "stride_kv_tok", "stride_ob", "stride_oh"]


def _pdl(cfg: MlaBucket, arch: str) -> bool:
    """PDL as a GPU launch on `arch` sets it (the plan here is made on the CPU, which has none)."""
    return cfg.pdl and pdl_ok(arch, cuda=not is_amd(arch))


def partial_spec(bucket: str, heads: int, cfg: MlaBucket, kv: str, arch: str, compute: Compute | None = None,
                 pv: Pv | None = None, a8w8: dict | None = None) -> CompileSpec:  # fmt: skip
    """The partial kernel as the launcher builds it for this KV format and compute (from the same plan: fp8
    overrides and constexprs included); pv overrides the a8w8 PV operand type (both are compiled: the GPU bench
    decides). Launch options: the knobs the config sets (aot.py drops AMD ones for CUDA)."""
    if pv is not None or a8w8:
        cfg = cfg.replace(a8w8=cfg.a8w8.replace(**({"pv": pv} if pv else {}), **(a8w8 or {})))
    plan = api.make_plan(heads, torch.bfloat16, KV_TORCH[kv], arch=arch, config=cfg,
                         compute=compute if kv == "fp8" else None)  # fmt: skip
    cfg = plan.cfg
    ptrs = {"Q": "*bf16", "KV": KV_TYPES[kv], "O": "*bf16", "PartO": "*fp32", "PartLse": "*fp32", "Chunk": "*i32",
            "kv_indptr": "*i32", "kv_indices": "*i64"}  # fmt: skip
    const = {"H": heads, "BLOCK_H": plan.block_h, "BLOCK_N": cfg.BLOCK_N, "BLOCK_B": 256,
             "MIN_CHUNK": cfg.min_chunk, "PAGE_SIZE": 1, "DL": D_LATENT, "DR": D_ROPE,
             **plan.partial[False], "PDL": _pdl(cfg, arch)}  # fmt: skip
    # Every constexpr is named: Triton 3.7 no longer fills a defaulted one left out of an AOT signature.
    sig = {**ptrs, **SCALARS, **dict.fromkeys(STRIDES, "i32"), **dict.fromkeys(const, "constexpr")}
    # As the JIT sees SGLang's buffers: aligned pointers, strides that are multiples of 576 or 512 (so of 16).
    attrs = aligned(sig, *PARTIAL_ARGS, *STRIDES)
    engine = api.engine(cfg, KV_TORCH[kv])
    gluon = f",{engine.value}" if engine.gluon else ""
    if engine == Engine.GLUON_WS and kv == "fp8" and cfg.a8w8.lazy_max:
        gluon += ",lazy_max"
    if plan.compute == Compute.A8W8:
        name = f"mla_decode/partial[{bucket},fp8,a8w8,pv-{cfg.a8w8.pv}{gluon}]"
        return CompileSpec(name, plan.kernel, sig, const, cfg.launch_knobs(), EXPECT_FP8_MMA[arch],
                           attrs=attrs, min_occupancy=A8W8_MIN_WAVES.get(arch), no_spills=True)  # fmt: skip
    name = f"mla_decode/partial[{bucket},{kv}{gluon}]"
    return CompileSpec(name, plan.kernel, sig, const, cfg.launch_knobs(), EXPECT_MMA[arch], attrs=attrs,
                       no_spills=bool(gluon))  # fmt: skip


def mxfp4_spec(bucket: str, heads: int, cfg: MlaBucket, arch: str, block: int) -> CompileSpec:
    """The partial kernel for an E2M1 cache with a scale per `block` columns (32: the qualifier's MXFP4; 16:
    SGLang's fp4_mx_block16 pool; not served by the hook yet, MXFP4_KV.md), from the same plan as a launch: bf16
    MMAs on codes decoded in registers."""
    plan = api.make_plan(heads, torch.bfloat16, api.KV_MXFP4, arch=arch, config=cfg, kv_block=block)
    cfg = plan.cfg
    ptrs = {"Q": "*bf16", "KV": "*u8", "KS": "*u8", "O": "*bf16", "PartO": "*fp32", "PartLse": "*fp32",
            "Chunk": "*i32", "kv_indptr": "*i32", "kv_indices": "*i64"}  # fmt: skip
    const = {"H": heads, "BLOCK_H": plan.block_h, "BLOCK_N": cfg.BLOCK_N, "BLOCK_B": 256, "MIN_CHUNK": cfg.min_chunk,
             "DL": D_LATENT, "DR": D_ROPE, "SB": block, **plan.partial[False], "PDL": _pdl(cfg, arch)}  # fmt: skip
    strides = ["stride_qb", "stride_qh", "stride_kv", "stride_ks", "stride_ob", "stride_oh"]
    sig = {**ptrs, "qk_scale": "fp32", "bs": "i32", "num_programs": "i32", **dict.fromkeys(strides, "i32"),
           **dict.fromkeys(const, "constexpr")}  # fmt: skip
    # rows of 288 code bytes and 18 or 36 scale bytes: only the code rows are 16-byte multiples
    attrs = aligned(sig, "Q", "KV", "O", "PartO", "PartLse", "kv_indptr", "kv_indices", "stride_qb", "stride_qh",
                    "stride_kv", "stride_ob", "stride_oh")  # fmt: skip
    name = f"mla_decode/partial[{bucket},{'mxfp4' if block == 32 else f'e2m1-b{block}'}]"
    return CompileSpec(name, plan.kernel, sig, const, cfg.launch_knobs(),
                       EXPECT_MMA[arch], attrs=attrs, no_spills=True)  # fmt: skip


def merge_spec(bucket: str, heads: int, cfg: MlaBucket, block_dv: int, arch: str) -> CompileSpec:
    """The merge at one column block (the launcher picks 64..512 by batch; the extremes are compiled)."""
    m = cfg.merge
    block_p = max(1, min(m.BLOCK_P, m.max_tile // block_dv))
    const = {"H": heads, "BLOCK_P": block_p, "BLOCK_DV": block_dv, "DL": D_LATENT, "PDL": _pdl(cfg, arch)}
    sig = {"O": "*bf16", "PartO": "*fp32", "PartLse": "*fp32", "Chunk": "*i32", "kv_indptr": "*i32",
           "v_scale": "fp32", "stride_ob": "i32", "stride_oh": "i32", **dict.fromkeys(const, "constexpr")}  # fmt: skip
    attrs = aligned(sig, "O", "PartO", "PartLse", "kv_indptr", "stride_ob", "stride_oh")
    return CompileSpec(
        f"mla_decode/merge[{bucket},dv{block_dv}]", _mla_merge_kernel, sig, const, m.launch_knobs(), attrs=attrs
    )


def store_spec(arch: str) -> CompileSpec:
    """The fp8 KV store (api.store_kv) as served: bf16 rows, a k_scale, int64 locations (SGLang's out_cache_loc)."""
    const = {"D": D_QK, "BLOCK_D": api.STORE_BLOCK, "SCALED": True, "SATURATE": False}  # torch 2.11's rule
    sig = {"K": "*bf16", "LOC": "*i64", "CACHE": "*fp8e4nv", "SCALE": "*fp32", "stride_k": "i32", "stride_c": "i32",
           **dict.fromkeys(const, "constexpr")}  # fmt: skip
    attrs = aligned(sig, "K", "LOC", "CACHE", "stride_k", "stride_c")
    return CompileSpec("mla_decode/kv_store[fp8]", _kv_store_kernel, sig, const, {"num_warps": 4}, attrs=attrs)


def compile_specs(arch: str) -> list[CompileSpec]:
    """Per bucket: the partial kernel for each KV format, the merge at the smallest and largest column block."""
    specs = []
    for bucket, cfg in api.table(arch).items():
        heads = parse(bucket).limit
        specs += [partial_spec(bucket, heads, cfg, kv, arch) for kv in KV_TYPES]  # as served
        if cfg.fp8_compute != Compute.A16:  # the upcast path stays an option (compute a16)
            specs.append(partial_spec(bucket, heads, cfg, "fp8", arch, Compute.A16))
        if cfg.a8w8 is not None:  # the Triton a8w8 kernel: the bucket's PV operand type first, then the other one
            pvs = [cfg.a8w8.pv, *(p for p in A8W8_PV if p != cfg.a8w8.pv)]
            specs += [partial_spec(bucket, heads, cfg, "fp8", arch, Compute.A8W8, pv, TRITON) for pv in pvs]
            gluon = arch == "sm90" and heads <= 16  # the Gluon kernel (sweep variants a8w8_gluon, kv16_gluon)
            # Both Gluon a8w8 kernels (the served one is listed first already; names dedupe below). gluon_ws with
            # PV in fp8 (retired sweep row) is left out: one register spilled at its converter's entry
            if gluon:
                specs += [
                    partial_spec(bucket, heads, cfg, "fp8", arch, Compute.A8W8, a8w8=k)
                    for k in (GLUON_A8W8, GLUON_WS, GLUON_WS_LAZY)
                ]
            if gluon and cfg.kv16_engine != Engine.GLUON:
                specs.append(partial_spec(bucket, heads, cfg.replace(**GLUON_KV16), "bf16", arch))
        if heads <= 16:  # DeepSeek-R1's heads a GPU at TP8, the qualifier's
            specs += [mxfp4_spec(bucket, heads, cfg, arch, block) for block in api.KV_BLOCKS]
        specs += [merge_spec(bucket, heads, cfg, dv, arch) for dv in (cfg.merge.min_block_dv, D_LATENT)]
    specs.append(store_spec(arch))
    once: dict[str, CompileSpec] = {}  # each kernel once, where first listed (the served one first)
    for spec in specs:
        once.setdefault(spec.name, spec)
    return list(once.values())


def main(argv: list[str] | None = None) -> int:
    """`python -m speedrun.eval.kernels.mla_decode_compile ARCH...`: compile every spec, print one JSON line each.
    Run it without TRITON_INTERPRET (the interpreter replaces @triton.jit functions at import)."""
    import json
    import sys

    from speedrun.eval.kernels.aot import compile_spec

    failed = 0
    for arch in (argv if argv is not None else sys.argv[1:]) or ["sm90", "gfx950"]:
        for spec in compile_specs(arch):
            res = compile_spec(spec, arch)
            failed += not res.ok
            print(json.dumps({"name": res.name, "arch": arch, "ok": res.ok, "error": res.error, "mma": res.mma,
                              "shared": res.shared}))  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
