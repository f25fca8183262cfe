"""AOT compile specs of the MXFP4 GEMM: every config bucket of the arch's JSON in the A mode its route runs,
plus the w4a16 (A_MODE 0) variant of each bucket and the quantizer/dequantizer kernels. The constexprs and launch
options come from the plan's own resolver (api.kernel), as a GPU launch gets them.

Spec names keep the readiness reports' row keys (`mxfp4_gemm/default[m<=16,...]`, the last bucket `m<=max`):
the committed reports and CI's accepted Triton 3.7 failures name kernels by them."""

from __future__ import annotations

from typing import Any

from speedrun.eval.kernels.aot import CompileSpec, aligned
from speedrun.overlays.arch import is_amd
from speedrun.overlays.buckets import parse
from speedrun.overlays.mxfp4_gemm import api
from speedrun.overlays.mxfp4_gemm.config import AMode, Engine, GemmBucket, GemmTable, Layout, Route
from speedrun.overlays.mxfp4_gemm.kernels import mxfp4_dequant_kernel, mxfp4_gemm_kernel, mxfp4_quant_kernel

# gfx950 must use the scaled MFMA for FP4 x FP4; sm90 has no FP4 MMA, so bf16 wgmma (or mma.sync) after dequant.
SM90_BF16 = r"wgmma\.mma_async\.sync\.aligned\.m64n\d+k16\.f32\.bf16\.bf16|mma\.sync\.aligned\.m16n8k16\.\S*bf16"
EXPECT = {"gfx950": r"v_mfma_scale_f32_\w+", "sm90": SM90_BF16}
EXPECT_BF16 = {"gfx950": r"v_mfma_f32_\w+bf16", "sm90": EXPECT["sm90"]}

GEMM_SIG = {
    "a_ptr": "*bf16", "as_ptr": "*u8", "w_ptr": "*u8", "ws_ptr": "*u8", "c_ptr": "*bf16", "part_ptr": "*fp32",
    "cnt_ptr": "*i32", "M": "i32", "N": "i32", "K": "i32", "split_k": "i32", "k_per_split": "i32", "stride_am": "i32",
    "stride_asm": "i32",
    "stride_ask": "i32", "stride_wn": "i32", "stride_wsn": "i32", "stride_cm": "i32",
}  # fmt: skip
CONST_KEYS = ("A_MODE", "DOT_SCALED", "DOT_F32", "BLOCK_M", "BLOCK_N", "BLOCK_K", "SPLIT", "GROUP", "EVEN_K",
              "W_DEQ", "W_ASM", "W_MUL1", "A_ASM", "RED", "B_REGS", "PDL")  # fmt: skip


def gemm_spec(name: str, cfg: GemmBucket, a_mode: AMode, arch: str, split_k: int,
              layout: Layout = Layout.PLAIN) -> CompileSpec:  # fmt: skip
    """The GEMM kernel of one config in one A mode as a GPU launch builds it (K unknown: EVEN_K, no BLOCK_K
    shrink); split_k > 1 compiles the split-K epilogue."""
    kern = api.kernel(cfg, a_mode, arch, None, layout, cuda=True)
    if kern.engine == Engine.GLUON_WS:
        return ws_spec(name, kern, split_k)
    consts = {"B_REGS": False, "PDL": False, **kern.consts, "SPLIT": split_k > 1, "EVEN_K": True}  # all named
    sig = dict(GEMM_SIG)
    if a_mode == AMode.MXFP4:
        sig["a_ptr"] = "*u8"
    sig.update({k: "constexpr" for k in CONST_KEYS})
    expect = EXPECT[arch] if consts["DOT_SCALED"] or arch == "sm90" else EXPECT_BF16[arch]
    # As the JIT sees the tensors at the DeepSeek shapes: aligned pointers; N, K and the row strides are multiples
    # of 16, and so is the weight-scale row stride (K/32 with K a multiple of 512; swz128 pads it to 16 anyway).
    strides = ("stride_am", "stride_wn", "stride_cm", "stride_wsn")
    attrs = aligned(sig, *[k for k, v in GEMM_SIG.items() if v.startswith("*")], "N", "K", *strides)
    return CompileSpec(name, mxfp4_gemm_kernel, sig, consts, kern.opts, expect, attrs=attrs)


WS_SIG = {
    "A": "*bf16", "W": "*u8", "WS": "*u8", "C": "*bf16", "Part": "*fp32", "Cnt": "*i32", "M": "i32", "N": "i32",
    "K": "i32", "split_k": "i32", "k_per_split": "i32", "stride_am": "i32", "stride_wn": "i32", "stride_wsn": "i32",
    "stride_cm": "i32",
}  # fmt: skip


def ws_spec(name: str, kern: api.Kernel, split_k: int) -> CompileSpec:
    """gluon_sm90_ws.py's kernel as api.kernel resolves a gluon_ws bucket (aligned as the JIT sees DeepSeek's
    tensors, like gemm_spec); spill-free, one CTA an SM."""
    from speedrun.overlays.mxfp4_gemm.gluon_sm90_ws import mxfp4_gemm_ws_kernel

    consts = {**kern.consts, "SPLIT": split_k > 1}
    sig = {**WS_SIG, **{k: "constexpr" for k in consts}}
    ints = ("N", "K", "stride_am", "stride_wn", "stride_wsn", "stride_cm")
    attrs = aligned(sig, *[k for k, v in WS_SIG.items() if v.startswith("*")], *ints)
    return CompileSpec(name, mxfp4_gemm_ws_kernel, sig, consts, kern.opts, SM90_BF16, attrs=attrs, min_occupancy=1,
                       no_spills=True)  # fmt: skip


def ws_specs(table: GemmTable, arch: str) -> list[CompileSpec]:
    """The sweep's gluon_ws rows (eval.kernels.mxfp4_gemm_bench) on each fused decode bucket they are timed at, with
    the served weight layout (swz128 in row groups of 64, one-multiply decode); sm90 only."""
    if arch != "sm90":
        return []
    from speedrun.eval.kernels.mxfp4_gemm_bench import ONLY_M, SWEEP_VARIANTS, variant_config

    out = []
    for variant, knobs in SWEEP_VARIANTS.items():
        if knobs.get("engine") != Engine.GLUON_WS:
            continue
        for key, bucket in table.buckets.items():
            lim = parse(key).limit
            if bucket.route != Route.FUSED or (variant in ONLY_M and lim not in ONLY_M[variant]):
                continue
            cfg, _ = variant_config(bucket, variant, key, Layout.SWZ128_G64_MUL1)
            kern = api.kernel(cfg.with_overrides(cfg.swz), AMode.QUANT, arch, None, Layout.SWZ128_G64_MUL1, True)
            out.append(ws_spec(f"mxfp4_gemm/{variant}[{key},swz128_g64_mul1]", kern, 2))
    return out


def _a_mode(route: Route, arch: str) -> AMode:
    """The A mode of a route's quantized-A GEMM on the GPU (api.resolve)."""
    return api.quant_mode(route, is_amd(arch))


def kernel_route(route: Route) -> Route:
    """The route a bucket's GEMM kernel serves: a stock_fp8 bucket's is its dequant_w fallback's (same A mode; the
    route itself runs mx.fp8's conversion, compiled in the MoE's specs, and stock's kernels)."""
    return Route.DEQUANT_W if route == Route.STOCK_FP8 else route


def label(key: str) -> str:
    """A bucket's name in spec names: its key, the `m>N` bucket as `m<=max` (the reports' row keys)."""
    return "m<=max" if parse(key).above else key


def helper_specs(arch: str) -> list[CompileSpec]:
    qsig = {"x_ptr": "*bf16", "q_ptr": "*bf16", "s_ptr": "*u8", "M": "i32", "K": "i32", "stride_xm": "i32",
            "stride_qm": "i32", "stride_sm": "i32", "QDQ": "constexpr", "BLOCK_M": "constexpr",
            "BLOCK_K": "constexpr", "PDL": "constexpr"}  # fmt: skip
    q = {"BLOCK_M": 16, "BLOCK_K": 256, "PDL": False}  # every constexpr named (Triton 3.7)
    specs = [CompileSpec("mxfp4_gemm/quant[qdq]", mxfp4_quant_kernel, qsig, {"QDQ": True, **q}, {"num_warps": 4})]
    specs.append(CompileSpec("mxfp4_gemm/quant[packed]", mxfp4_quant_kernel, dict(qsig, q_ptr="*u8"),
                             {"QDQ": False, **q}, {"num_warps": 4}))  # fmt: skip
    dsig = {"w_ptr": "*u8", "ws_ptr": "*u8", "o_ptr": "*bf16", "N": "i32", "K": "i32", "stride_wsn": "i32",
            "BLOCK_N": "constexpr", "BLOCK_K": "constexpr", "SWZ": "constexpr", "ROWG": "constexpr"}  # fmt: skip
    for swz in (False, True):
        specs.append(CompileSpec(f"mxfp4_gemm/dequant_w[swz={swz}]", mxfp4_dequant_kernel, dsig,
                                 {"BLOCK_N": 32, "BLOCK_K": 256, "SWZ": swz, "ROWG": 1}, {"num_warps": 4}))  # fmt: skip
    return specs


def entries(table: GemmTable) -> list[tuple[str, str, GemmBucket]]:
    """(shape, bucket key, config) of every table entry: ("default", key, bucket) per M bucket, then each per-shape
    entry "<N>x<K>:<bucket>" as the plan resolves it (its knobs over the bucket's "swz" ones too)."""
    out = [("default", key, cfg) for key, cfg in table.buckets.items()]
    for key in table.shapes:
        shape, bucket = key.split(":", 1)
        out.append((shape, bucket, table.config(bucket, *map(int, shape.split("x")))))
    return out


def compile_specs(arch: str) -> list[CompileSpec]:
    """One spec per bucket config in its route's A mode, w4a16 per bucket (and per-shape entries), helpers."""
    table = api.table(arch)
    specs: list[CompileSpec] = []
    seen: set[tuple[Any, ...]] = set()
    for shape, bucket, cfg in entries(table):
        variants = [(_a_mode(cfg.route, arch), cfg)]
        if cfg.fused_below_nk:  # small weights take the fused route (api.route_for)
            variants.append((AMode.QUANT, cfg))
        if shape == "default":  # the w4a16 variant: bf16 A, dequant path, with the bucket's "a16" overrides
            variants.append((AMode.BF16, cfg.with_overrides(cfg.a16)))
        for mode, c in variants:
            split = 2 if c.SPLIT_K != 1 else 1  # auto split-K compiles the split epilogue
            knobs = c.entry()  # the knobs the entry sets (table terms)
            dedup = (mode, split, *sorted((k, str(v)) for k, v in knobs.items() if k not in ("route", "a16", "swz")))
            if dedup in seen:
                continue
            seen.add(dedup)
            name = f"mxfp4_gemm/{shape}[{label(bucket)},{kernel_route(c.route)},A_MODE={mode.value}]"
            specs.append(gemm_spec(name, c, mode, arch, split))
    return specs + swz_specs(table, arch) + ws_specs(table, arch) + helper_specs(arch)


def swz_specs(table: GemmTable, arch: str) -> list[CompileSpec]:
    """sm90 GEMM buckets with swz128 weights (the table's "_layout": what the hook gives the weights at load), with
    each bucket's "swz" overrides, and each per-shape entry; the dequant_w route's swz decode is in helper_specs."""
    if arch != "sm90":
        return []
    out = []
    for shape, key, base in entries(table):
        cfg = base.with_overrides(base.swz)
        if kernel_route(cfg.route) == Route.DEQUANT_W:
            continue
        modes = {_a_mode(cfg.route, arch)}
        if shape == "default":
            modes.add(AMode.QUANT if cfg.fused_below_nk else AMode.BF16)
        for mode in sorted(modes):
            name = f"mxfp4_gemm/{shape}[{label(key)},swz128_mul1,A_MODE={mode.value}]"
            out.append(gemm_spec(name, cfg, mode, arch, 2, layout=Layout.SWZ128_MUL1))
    return out


SMEM_LIMIT = {"sm90": 232448, "gfx950": 163840}  # bytes of shared memory / LDS per CTA


def check_all(arch: str) -> list[str]:
    """Compile every spec for `arch`; the failures (errors, missing MMA, too much shared memory), empty if none.
    Needs a process without TRITON_INTERPRET (interpreted kernels cannot be compiled)."""
    from speedrun.eval.kernels.aot import compile_spec

    bad = []
    for spec in compile_specs(arch):
        res = compile_spec(spec, arch)
        if not res.ok:
            bad.append(f"{spec.name}: {res.error}"[:400])
        elif (res.shared or 0) > SMEM_LIMIT[arch]:
            bad.append(f"{spec.name}: shared memory {res.shared} > {SMEM_LIMIT[arch]}")
        elif arch == "gfx950" and spec.constexprs.get("DOT_SCALED") and not any("mfma_scale" in m for m in res.mma):
            bad.append(f"{spec.name}: no scaled MFMA in {res.mma}")
    return bad


def main(argv: list[str] | None = None) -> int:
    """`python -m speedrun.eval.kernels.mxfp4_gemm_compile ARCH...`: compile every spec, one JSON summary."""
    import json
    import sys

    archs = (argv if argv is not None else sys.argv[1:]) or ["sm90", "gfx950"]
    bad = {arch: check_all(arch) for arch in archs}
    print(json.dumps({"specs": {a: len(compile_specs(a)) for a in archs}, "failures": bad}, indent=1))
    return 1 if any(bad.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
