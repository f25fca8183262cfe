"""AOT compile specs for the MXFP4 MoE: GEMM1 and GEMM2 per config bucket (each must use the matrix unit;
w4a4 on gfx950 must use v_mfma_scale), plus the sort and activation-quant kernels (no matrix unit) and, on CUDA
only (ROCm never takes the route), the large-M route's MXFP4 -> FP8 conversion (must use the native e4m3 cvt).
The GEMMs' mode flags, K tiles and launch options come from the plan's own resolver (api.resolve), as a GPU launch
gets them."""

from __future__ import annotations

from speedrun.eval.kernels.aot import CompileSpec, aligned
from speedrun.overlays.arch import is_amd
from speedrun.overlays.buckets import parse
from speedrun.overlays.mx.fp8_kernel import mxfp4_to_fp8_kernel
from speedrun.overlays.mxfp4_moe import api, kernels, sort
from speedrun.overlays.mxfp4_moe.config import CUDA_LAYOUT, Act, MoeBucket
from speedrun.overlays.mxfp4_moe.kernels import (
    combine_kernel,
    moe_gemm1_kernel,
    moe_gemm2_kernel,
    quant_rows_kernel,
)

OP = "mxfp4_moe"
TOPK = {"w4a16": 4, "w4a4": 9}  # GPT-OSS top-4; DeepSeek top-8 + fused shared expert
INTER = {"w4a16": 2880, "w4a4": 256}  # GEMM2's K: GPT-OSS; DeepSeek's TP8 shard
EXPECT = {"sm90": r"mma\.sync|wgmma", "gfx950": r"v_mfma"}
EXPECT_W4A4_GFX950 = r"v_mfma_scale"
PLAIN_FALLBACK_KEY = "w4a16:tpe<=4"  # SPEEDRUN_MXFP4_MOE_LAYOUT=plain on sm90: also compiled


def _types(fmt: str, cfg: MoeBucket) -> dict[str, str]:
    a4 = fmt == "w4a4"
    act = "*u8" if a4 and not cfg.a_qdq else "*bf16"  # a_qdq: w4a4 activations as bf16 on the MXFP4 grid
    if a4 and cfg.a8:  # the w4a8 path: e4m3 activations, fp32 scales per 128 columns
        return {"act": "*fp8e4nv", "act_s": "*fp32", "bias": "*u8"}
    return {"act": act, "act_s": act, "bias": "*u8" if a4 else "*fp32"}  # w4a4 has no bias: a scale tensor stands in


# Every mode flag is named in a spec (Triton 3.7 no longer fills a defaulted constexpr left out of an AOT
# signature): the kernels' defaults, overridden by what the resolver sets.
FLAGS_OFF = {"SWAP": False, "W_DEQ": 0, "W_ASM": False, "W_SWZ": False, "W_MUL1": False, "B_REGS": False,
             "A_SW": False}  # fmt: skip


def a_sw(cfg: MoeBucket, a4: bool, run: api.Launch) -> bool:
    """A_SW as the plan sets it for DeepSeek's TP8 shard (hidden 7168, intermediate 256)."""
    return a4 and cfg.a_scale_words and api.scale_words_fit(run, 7168, 256)


def launch(cfg: MoeBucket, arch: str, swz: bool) -> api.Launch:
    """The bucket as the hook's plan resolves it on an `arch` GPU, for weights in swz128 (scale bytes <= 128: the
    one-multiply decode) or plain layout."""
    return api.resolve(cfg, swz, swz, arch, cuda=not is_amd(arch))


def _runtime_attrs(sig: dict[str, str], *extra: str) -> dict[str, str]:
    """As the JIT sees the real shapes: aligned pointers; N, K and the weight/activation row strides are
    multiples of 16 (plain scale strides are K/32 and may not be, so they get no hint; swz128 scale rows are
    padded to 16 bytes, see mx.layout)."""
    ptrs = [k for k, v in sig.items() if v.startswith("*")]
    return aligned(sig, *ptrs, "N", "K", "stride_am", "stride_we", "stride_wn", "stride_be", *extra)


def gemm1_spec(key: str, cfg: MoeBucket, arch: str, swz: bool = False, row_group: int = 1) -> CompileSpec:
    fmt = key.split(":")[0]
    swz = swz and not cfg.dot_scaled and not is_amd(arch)
    run, t, w4a4 = launch(cfg, arch, swz), _types(fmt, cfg), fmt == "w4a4"
    a4 = w4a4 and not cfg.a_qdq and not cfg.a8  # the kernels see MXFP4 activation codes
    sig = {"a_ptr": t["act"], "as_ptr": t["act_s"], "w_ptr": "*i32" if swz else "*u8", "ws_ptr": "*u8",
           "b_ptr": t["bias"], "o_ptr": t["act"], "os_ptr": t["act_s"], "sorted_ptr": "*i32", "expert_ids_ptr": "*i32",
           "npad_ptr": "*i32", **dict.fromkeys(("NUM", "N", "K", "stride_am", "stride_asm", "stride_we",
           "stride_wn", "stride_wse", "stride_wsn", "stride_be", "stride_om", "stride_osm"), "i32"),
           "alpha": "fp32", "limit": "fp32", "part_ptr": "*fp32", "cnt_ptr": "*i32"}  # fmt: skip
    act = Act.SILU if w4a4 else Act.SWIGLU_OAI  # quark DeepSeek | GPT-OSS
    const = {"TOPK": TOPK[fmt], "A_FP4": a4, "OUT_FP4": a4, "ACT": int(act), "HAS_BIAS": not w4a4,
             "DOT_SCALED": run.dot_scaled, "BLOCK_M": cfg.BLOCK_M, "BLOCK_N": cfg.BLOCK_N1,
             "BLOCK_K": run.block_k1, **FLAGS_OFF, **run.flags, "A_SW": a_sw(cfg, a4, run),
             "SPLIT_K": 2 if cfg.split1 != 1 else 1, "EVEN_N": True, "OUT_QDQ": w4a4 and cfg.a_qdq,
             "W_ROWG": row_group if swz else 1, "A8": w4a4 and cfg.a8, "PDL": run.pdl}  # fmt: skip
    expect = EXPECT_W4A4_GFX950 if (a4 and const["DOT_SCALED"] and is_amd(arch)) else EXPECT[arch]
    sig.update(dict.fromkeys(const, "constexpr"))
    attrs = _runtime_attrs(sig, "stride_om", *(("stride_wse", "stride_wsn") if swz else ()))
    return CompileSpec(
        f"{OP}/gemm1[{key}]" + ("/swz" if swz else "") + (f"/g{row_group}" if row_group > 1 else ""),
        moe_gemm1_kernel,
        sig,
        const,
        run.opts1,
        expect,
        attrs=attrs,
    )


def gemm2_spec(key: str, cfg: MoeBucket, arch: str, swz: bool = False, row_group: int = 1) -> CompileSpec:
    fmt = key.split(":")[0]
    swz = swz and not cfg.dot_scaled and not is_amd(arch)
    run, t, w4a4 = launch(cfg, arch, swz), _types(fmt, cfg), fmt == "w4a4"
    a4 = w4a4 and not cfg.a_qdq and not cfg.a8  # the kernels see MXFP4 activation codes
    sig = {"a_ptr": t["act"], "as_ptr": t["act_s"], "w_ptr": "*i32" if swz else "*u8", "ws_ptr": "*u8",
           "b_ptr": t["bias"], "tw_ptr": "*fp32", "o_ptr": "*bf16" if cfg.y_bf16 else "*fp32", "sorted_ptr": "*i32",
           "expert_ids_ptr": "*i32",
           "npad_ptr": "*i32",
           **dict.fromkeys(("NUM", "N", "K", "stride_am", "stride_asm", "stride_we", "stride_wn", "stride_wse",
           "stride_wsn", "stride_be", "stride_om"), "i32")}  # fmt: skip
    const = {"TOPK": TOPK[fmt], "A_FP4": a4, "HAS_BIAS": not w4a4, "DOT_SCALED": run.dot_scaled,
             "BLOCK_M": cfg.BLOCK_M, "BLOCK_N": cfg.BLOCK_N2, "BLOCK_K": run.block_k2, **FLAGS_OFF, **run.flags,
             "A_SW": a_sw(cfg, a4, run),
             "EVEN_N": True, "N_GROUP": cfg.group2, "W_ROWG": row_group if swz else 1,
             "A8": w4a4 and cfg.a8, "PDL": run.pdl,
             "PF_CHUNKS": api.gemm2_prefetch(INTER[fmt])["PF_CHUNKS"] if run.pdl else 0}  # fmt: skip
    expect = EXPECT_W4A4_GFX950 if (a4 and const["DOT_SCALED"] and is_amd(arch)) else EXPECT[arch]
    sig.update(dict.fromkeys(const, "constexpr"))
    attrs = _runtime_attrs(sig, "stride_om", *(("stride_wse", "stride_wsn") if swz else ()))
    return CompileSpec(
        f"{OP}/gemm2[{key}]" + ("/swz" if swz else "") + (f"/g{row_group}" if row_group > 1 else ""),
        moe_gemm2_kernel,
        sig,
        const,
        run.opts2,
        expect,
        attrs=attrs,
    )


def aux_specs() -> list[CompileSpec]:
    """Sort (small and large paths) and the activation quantizer, at DeepSeek's 257 experts."""
    e = {"E_POW2": 512}
    small_sig = {"ids_ptr": "*i32", "counts_ptr": "*i32", "rank_ptr": "*i32", "offsets_ptr": "*i32",
                 "sorted_ptr": "*i32", "expert_ids_ptr": "*i32", "npad_ptr": "*i32", "NUM": "i32", "E": "i32",
                 "max_blocks": "i32"}  # fmt: skip
    c_small = {"BLOCK_M": 16, **e, "CHUNK": sort.CHUNK, "BCHUNK": 64, "PDL": False}  # every constexpr named
    c_off = {"BLOCK_M": 64, **e, "BCHUNK": 64}
    off_sig = {k: small_sig[k] for k in small_sig if k not in ("ids_ptr", "rank_ptr")}
    rank_sig = {"ids_ptr": "*i32", "counts_ptr": "*i32", "rank_ptr": "*i32", "NUM": "i32", "E": "i32"}
    scat_sig = {"ids_ptr": "*i32", "rank_ptr": "*i32", "offsets_ptr": "*i32", "sorted_ptr": "*i32",
                "NUM": "i32", "E": "i32"}  # fmt: skip
    q_sig = {"x_ptr": "*bf16", "q_ptr": "*u8", "s_ptr": "*u8", "M": "i32", "K": "i32", "stride_xm": "i32",
             "stride_qm": "i32", "stride_sm": "i32"}  # fmt: skip
    c_chunk, c_q = {"CHUNK": sort.CHUNK}, {"BLOCK_R": 4, "BLOCK_K": 256, "QDQ": False, "PDL": False}
    comb_sig = {"y_ptr": "*fp32", "ids_ptr": "*i32", "o_ptr": "*bf16", "H": "i32", "E": "i32", "stride_ym": "i32",
                "stride_om": "i32", "scale": "fp32"}  # fmt: skip
    mk = lambda name, fn, sig, c, w: CompileSpec(
        f"{OP}/{name}", fn, {**sig, **dict.fromkeys(c, "constexpr")}, c, {"num_warps": w}
    )
    return [
        mk("sort_small", kernels._align_small_kernel, small_sig, c_small, 8),
        mk("sort_rank", kernels._rank_kernel, rank_sig, c_chunk, 4),
        mk("sort_offsets", kernels._offsets_kernel, off_sig, c_off, 8),
        mk("sort_scatter", kernels._scatter_kernel, scat_sig, c_chunk, 4),
        mk("quant_rows", quant_rows_kernel, q_sig, c_q, 4),
        mk("combine", combine_kernel, comb_sig, {"TOPK": 9, "BLOCK_H": 1024, "PDL": False}, 4),
    ]


EXPECT_FP8_CVT = r"cvt\.rn\.satfinite\.e4m3x2\.f32"  # the hardware fp32 -> e4m3 pair cast (sm89+)


def to_fp8_specs(arch: str) -> list[CompileSpec]:
    """mx.fp8.to_fp8's conversion (shared with the GEMM's large-M route) on the experts as the sm90 hook stores them
    (swz128 in 64-row groups), on row-major swz128 (the GEMM's weights) and on plain ones (the layout override), as
    launched: inline-PTX decode, 8 warps; none on ROCm, where the route is never taken."""
    if is_amd(arch):
        return []
    specs = []
    for swz, group in ((True, CUDA_LAYOUT.row_group), (True, 1), (False, 1)):
        sig = {"w_ptr": "*i32" if swz else "*u8", "ws_ptr": "*u8", "q_ptr": "*fp8e4nv", "qs_ptr": "*fp32",
               **dict.fromkeys(("ROWS", "K", "stride_we", "stride_wn", "stride_wse", "stride_wsn", "stride_qe",
               "stride_qn", "stride_qse", "stride_qsn"), "i32")}  # fmt: skip
        const = {"W_SWZ": swz, "W_ASM": True, "BLOCK": 128, "W_ROWG": group}
        sig.update(dict.fromkeys(const, "constexpr"))
        attrs = aligned(sig, "w_ptr", "ws_ptr", "q_ptr", "qs_ptr", "ROWS", "K", "stride_we", "stride_wn",
                        "stride_qe", "stride_qn")  # fmt: skip
        name = f"{OP}/to_fp8" + ("/swz" if swz else "") + (f"/g{group}" if group > 1 else "")
        specs.append(CompileSpec(name, mxfp4_to_fp8_kernel, sig, const, {"num_warps": 8}, EXPECT_FP8_CVT, attrs))
    return specs


def compile_specs(arch: str) -> list[CompileSpec]:
    """GEMM1 + GEMM2 per config bucket of `arch` on the weights the hook stores there (sm90: swz128 values in
    config.CUDA_LAYOUT's row groups, mx.layout; plus the plain-layout fallback of one decode bucket), then the
    auxiliary kernels."""
    specs = []
    swz = not is_amd(arch)
    group = CUDA_LAYOUT.row_group if swz else 1
    for key, cfg in api.table(arch).items():
        specs += [gemm1_spec(key, cfg, arch, swz, group), gemm2_spec(key, cfg, arch, swz, group)]
        if swz and key == PLAIN_FALLBACK_KEY:
            specs += [gemm1_spec(key, cfg, arch), gemm2_spec(key, cfg, arch)]
    return specs + ws_specs(arch) + aux_specs() + to_fp8_specs(arch)


WS_SIG = {
    "A": "*bf16", "W": "*i32", "WS": "*u8", "B": "*fp32", "TW": "*fp32", "O": "*bf16", "Part": "*fp32",
    "Cnt": "*i32", "sorted_ptr": "*i32", "expert_ids_ptr": "*i32", "npad_ptr": "*i32", "NUM": "i32", "N": "i32",
    "K": "i32", "stride_am": "i32", "stride_we": "i32", "stride_wn": "i32", "stride_wse": "i32", "stride_wsn": "i32",
    "stride_be": "i32", "stride_om": "i32", "alpha": "fp32", "limit": "fp32", "n_tiles": "i32", "split": "i32",
}  # fmt: skip


def ws_spec(name: str, consts: dict, fmt: str, y_fp32: bool) -> CompileSpec:
    """gluon_sm90_ws.py's kernel with one GEMM's constexprs as api._ws resolves them (the model's top-k); aligned as
    the JIT sees the real shapes, spill-free, one CTA an SM."""
    from speedrun.overlays.mxfp4_moe.gluon_sm90_ws import moe_gemm_ws_kernel

    consts = {**consts, "TOPK": TOPK[fmt]}
    sig = {**WS_SIG, "O": "*fp32" if y_fp32 and not consts["GEMM1"] else "*bf16"}
    sig.update({k: "constexpr" for k in consts})
    attrs = _runtime_attrs(sig, "stride_wse", "stride_wsn", "stride_om")
    return CompileSpec(name, moe_gemm_ws_kernel, sig, consts, {"num_warps": 4}, EXPECT["sm90"], attrs=attrs,
                       min_occupancy=1, no_spills=True)  # fmt: skip


def ws_specs(arch: str) -> list[CompileSpec]:
    """The sweep's gluon_ws rows (eval.kernels.mxfp4_moe_bench) on each decode bucket of their format (a prefill
    row, which sets every tile knob: on its format's first prefill bucket), both GEMMs, on the experts the sm90
    hook stores (CUDA_LAYOUT, one-multiply decode; GPT-OSS with biases); sm90 only."""
    if arch != "sm90":
        return []
    from speedrun.eval.kernels.mxfp4_moe_bench import PREFILL_TPE, SWEEP_VARIANTS, variant_cfg

    out = []
    for variant, var in SWEEP_VARIANTS.items():
        if var.get("engine") != "gluon_ws":
            continue
        done: set[str] = set()
        for key, base in api.table(arch).items():
            fmt, b = key.split(":")[0], parse(key)
            prefill = b.above or b.limit > PREFILL_TPE
            if var.get("fmt", fmt) != fmt or prefill != var.get("prefill", False) or (prefill and fmt in done):
                continue
            done.add(fmt)
            cfg, _ = variant_cfg(base, var)
            a4 = fmt == "w4a4"
            consts = api.ws_constexprs(cfg, Act.SILU if a4 else Act.SWIGLU_OAI, a4, not a4, CUDA_LAYOUT.row_group,
                                       True, cfg.pdl)  # fmt: skip
            for gemm, c in zip((1, 2), consts, strict=True):
                out.append(ws_spec(f"{OP}/{variant}[{key},gemm{gemm}]", c, fmt, not cfg.y_bf16))
    return out
