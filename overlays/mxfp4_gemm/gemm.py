"""Host side of the MXFP4 GEMM: config lookup per (N, K) and M bucket, route choice, split-K, launch.

Routes (per config entry, key "route"):
- "fused": one launch; bf16 activations are quantized to MXFP4 inside the GEMM's A-load. Every decode bucket
  (M <= 64) on both archs: one kernel per call, split-K reduced in the same launch (PERF.md, round 4).
- "prequant": one quantizer launch, then the GEMM reads quantized A (large M: each A element is quantized once
  instead of once per N tile). sm90 writes dequant(quant(A)) as bf16; gfx950 writes codes + scales.
- "dequant_w" (sm90 only): quantize A and dequantize W to bf16 with our kernels, then cuBLAS bf16 (prefill, where
  sm90 has no FP4 MMA and bf16 tensor-core time dominates).
All routes multiply exactly the same values (the reference quantizer's), only the summation order differs.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from speedrun.overlays.arch import current_arch, is_amd, launch_options, load_configs, sm_count
from speedrun.overlays.buffers import splitk_counters

BUCKETS = (16, 32, 64, 128, 256, 1024)
OP = "mxfp4_gemm"
# Weight layouts: "plain" (codes in k order), "swz128" (mx.layout: each lane's codes of a 128-wide K chunk contiguous,
# decoded as W_DEQ 4), "swz128_mul1" (same, every scale byte <= 128 checked at re-layout: one multiply per pair).
LAYOUTS = ("plain", "swz128", "swz128_mul1")


def config_arch(device: torch.device) -> str:
    """Which config table a device uses ("cpu" = the interpreter, which uses the sm90 table)."""
    if device.type != "cuda":
        return "sm90"
    arch = current_arch()
    if is_amd(arch) and arch != "gfx950":
        raise NotImplementedError(f"mxfp4_gemm has no config for {arch} (needs gfx950 scaled MFMA or CUDA)")
    return arch


def weight_layout(arch: str) -> str:
    """The layout the hook gives weights at load time: the table's "_layout" (sm90: "swz128"), else plain."""
    return "plain" if is_amd(arch) else load_configs(OP, arch).get("_layout", "plain")


def bucket_of(m: int) -> str:
    return next((str(b) for b in BUCKETS if m <= b), "max")


def pick_config(m: int, n: int, k: int, arch: str) -> dict[str, Any]:
    """default[bucket] overlaid with the per-shape entry "NxK"[bucket] when the table has one."""
    table = load_configs(OP, arch)
    bucket = bucket_of(m)
    cfg = dict(table["default"][bucket])
    cfg.update(table.get(f"{n}x{k}", {}).get(bucket, {}))
    return cfg


def split_k(cfg: dict[str, Any], tiles: int, k_tiles: int, sms: int) -> int:
    """Explicit SPLIT_K, else auto. Auto without "CTAS_PER_SM": enough splits for ~2 CTAs per SM. With
    "CTAS_PER_SM" (resident CTAs per SM, from ptxas registers / shared memory, see PERF.md): the split that
    minimises `_sm_cost`, ties to the smaller split. Both keep >= MIN_K_TILES per split, at most 32."""
    s = int(cfg.get("SPLIT_K", 0))
    cap = min(max(1, k_tiles // int(cfg.get("MIN_K_TILES", 2))), 32)
    if s <= 0 and cfg.get("CTAS_PER_SM"):
        warps = int(cfg.get("num_warps", 4))
        sat = max(1, min(int(cfg["CTAS_PER_SM"]), max(2, math.ceil(SAT_WARPS / warps))))
        red = red_unroll(int(cfg.get("BLOCK_M", 16)), int(cfg.get("BLOCK_N", 64)), warps)
        s = min(range(1, cap + 1), key=lambda c: (_sm_cost(tiles, k_tiles, c, sms, sat, red), c))
    elif s <= 0:
        s = 1 if tiles >= sms else min(math.ceil(2 * sms / tiles), cap)
    s = max(1, min(s, k_tiles))
    return math.ceil(k_tiles / math.ceil(k_tiles / s))  # no empty splits


# A decode SM is taken as issue-bound (rather than latency-bound) from SAT_WARPS warps (2 per scheduler) and 2 CTAs
# on it: each K step has CTA-wide barriers and a wgmma wait, which another CTA's warps fill.
SAT_WARPS = 8
RED_REGS = 64  # fp32 registers per thread the split-K reduction may hold in flight (RED partials per round)


def red_unroll(bm: int, bn: int, num_warps: int) -> int:
    """Partials the last split loads per round (kernel RED): as many as fit RED_REGS per thread, 1..8."""
    return max(1, min(8, RED_REGS * 32 * num_warps // (bm * bn)))


def _sm_cost(tiles: int, k_tiles: int, splits: int, sms: int, sat: int, red: int) -> float:
    """Time of the busiest SM in K-tile iterations of one CTA: its CTAs share its issue slots and bandwidth (decode
    tiles are issue-bound once `sat` CTAs share an SM; below that a CTA runs no faster, so fewer count as `sat`), plus
    the split-K tail: the last split's atomic (~1) and its reduction rounds (~1.5 each, an L2 round trip)."""
    per_sm = max(math.ceil(tiles * splits / sms), sat)
    tail = 0.0 if splits == 1 else 1 + 1.5 * math.ceil(splits / red)
    return per_sm * math.ceil(k_tiles / splits) + tail


def kernel_options(cfg: dict[str, Any], arch: str, device: torch.device) -> dict[str, Any]:
    """Launch options; "maxnreg" (CUDA only) caps registers per thread to raise the resident CTAs per SM."""
    opts = launch_options(cfg, arch)
    if cfg.get("maxnreg") and device.type == "cuda" and not is_amd(arch):
        opts["maxnreg"] = int(cfg["maxnreg"])
    return opts


def _block_k(cfg: dict[str, Any], k: int) -> int:
    bk = int(cfg["BLOCK_K"])
    while bk > 32 and bk > k:
        bk //= 2
    return bk


def launch_gemm(a: torch.Tensor, a_scale: torch.Tensor | None, w: torch.Tensor, w_scale: torch.Tensor,
                out: torch.Tensor, a_mode: int, cfg: dict[str, Any], arch: str,
                dot_scaled: bool, layout: str = "plain") -> torch.Tensor:  # fmt: skip
    """One GEMM launch: out[M, N] = A . W^T; a is bf16 [M, K] (modes 0/1) or packed [M, K/2] (mode 2)."""
    from speedrun.overlays.mxfp4_gemm.kernel import mxfp4_gemm_kernel

    m, n, k = out.shape[0], w.shape[0], w.shape[1] * 2
    bm, bn, bk = int(cfg["BLOCK_M"]), int(cfg["BLOCK_N"]), _block_k(cfg, k)
    if layout != "plain":
        bk = max(bk, 128)  # whole swz128 chunks
    num_m, num_n = math.ceil(m / bm), math.ceil(n / bn)
    tiles, k_tiles = num_m * num_n, math.ceil(k / bk)
    s = split_k(cfg, tiles, k_tiles, sm_count(out.device))
    part = torch.empty(tiles * s * bm * bn if s > 1 else 1, dtype=torch.float32, device=out.device)
    cnt = splitk_counters(out.device, tiles) if s > 1 else part
    sa = a_scale if a_scale is not None else w_scale  # unused pointer in modes 0/1
    group = int(cfg.get("GROUP", 1))
    grid = (num_n, s, num_m) if group == 1 else (tiles, s)  # kernel.mxfp4_gemm_kernel's two grid forms
    asm = out.device.type == "cuda" and torch.version.hip is None
    mxfp4_gemm_kernel[grid](
        a, sa, w, w_scale, out, part, cnt, m, n, k, s, math.ceil(k_tiles / s),
        a.stride(0), sa.stride(0), sa.stride(1), w.stride(0), w_scale.stride(0), out.stride(0),
        A_MODE=a_mode, DOT_SCALED=dot_scaled, DOT_F32=out.device.type == "cpu", BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
        SPLIT=s > 1, GROUP=group, EVEN_K=k % bk == 0, A_ASM=asm and a_mode == 1 and not dot_scaled,
        RED=red_unroll(bm, bn, int(cfg.get("num_warps", 4))),
        **deq_flags({**cfg, "BLOCK_K": bk}, out.device, dot_scaled, layout), **kernel_options(cfg, arch, out.device),
    )  # fmt: skip
    return out


def route_for(cfg: dict[str, Any], n: int, k: int) -> str:
    """The config's route, except "prequant" falls back to "fused" for weights under "fused_below_nk" elements:
    there the quantizer's extra launch costs more than re-quantizing A in every CTA (decode sizes)."""
    route = cfg.get("route", "fused")
    if route == "prequant" and n * k < int(cfg.get("fused_below_nk", 0)):
        return "fused"
    return route


def deq_flags(cfg: dict[str, Any], device: torch.device, dot_scaled: bool, layout: str = "plain") -> dict[str, Any]:
    """W_DEQ from the config's "deq" (0 generic, 1 fast interleaved, 2 fast halves, 3 words; 3 needs BLOCK_K >= 128,
    else 2), or 4 for swz128 weights; inline PTX only on CUDA."""
    deq = 0 if dot_scaled else int(cfg.get("deq", 0))
    if deq == 3 and int(cfg["BLOCK_K"]) < 128:
        deq = 2
    asm = device.type == "cuda" and torch.version.hip is None
    if layout != "plain":
        return {"W_DEQ": 4, "W_ASM": asm, "W_MUL1": asm and layout == "swz128_mul1"}
    return {"W_DEQ": deq, "W_ASM": deq > 0 and asm}


def relayout_weight(w: torch.Tensor, w_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Load time: plain MXFP4 -> (swz128 codes, padded scales, layout name); K % 128 == 0 (no padding needed)."""
    from speedrun.overlays.mx.layout import pad_scales, swizzle_mxfp4

    if (w.shape[1] * 2) % 128:
        raise NotImplementedError(f"swz128 needs K % 128 == 0, got K={w.shape[1] * 2}")
    mul1 = int(w_scale.max()) <= 128
    return swizzle_mxfp4(w), pad_scales(w_scale), "swz128_mul1" if mul1 else "swz128"


def plain_weight(w: torch.Tensor, w_scale: torch.Tensor, layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain-layout weight (for the dequantize-then-cuBLAS route and the reference) of a re-laid-out one."""
    if layout == "plain":
        return w, w_scale
    from speedrun.overlays.mx.layout import unswizzle_mxfp4

    k = w.shape[1] * 2
    return unswizzle_mxfp4(w, k), w_scale[:, : k // 32].contiguous()


def quantize(a: torch.Tensor, qdq: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Triton quantizer: bf16 dequant(quant(a)) if qdq, else (packed [M, K/2], scales [M, K/32])."""
    from speedrun.overlays.mxfp4_gemm.kernel import mxfp4_quant_kernel

    m, k = a.shape
    bm, bk = 16, 256 if k % 256 == 0 else 32
    if qdq:
        q, s = torch.empty_like(a, dtype=torch.bfloat16), None
    else:
        q = torch.empty(m, k // 2, dtype=torch.uint8, device=a.device)
        s = torch.empty(m, k // 32, dtype=torch.uint8, device=a.device)
    sp = s if s is not None else q
    grid = (math.ceil(m / bm), math.ceil(k / bk))
    mxfp4_quant_kernel[grid](a, q, sp, m, k, a.stride(0), q.stride(0), sp.stride(0), QDQ=qdq, BLOCK_M=bm,
                             BLOCK_K=bk, num_warps=4)  # fmt: skip
    return q, s


def dequantize_weight(w: torch.Tensor, w_scale: torch.Tensor, layout: str = "plain") -> torch.Tensor:
    """Triton W dequantization to bf16 [N, K] (contiguous codes; scale rows may be padded)."""
    from speedrun.overlays.mxfp4_gemm.kernel import mxfp4_dequant_kernel

    n, k = w.shape[0], w.shape[1] * 2
    w, w_scale = w.contiguous(), w_scale.contiguous()
    out = torch.empty(n, k, dtype=torch.bfloat16, device=w.device)
    swz = layout != "plain"
    bn, bk = 32, 256 if k % 256 == 0 else (128 if swz else 32)
    grid = (math.ceil(n / bn), math.ceil(k / bk))
    mxfp4_dequant_kernel[grid](w, w_scale, out, n, k, w_scale.stride(0), BLOCK_N=bn, BLOCK_K=bk, SWZ=swz, num_warps=4)
    return out


def mxfp4_gemm(a: torch.Tensor, w: torch.Tensor, w_scale: torch.Tensor, *, a_scale: torch.Tensor | None = None,
               quant_a: bool = True, out: torch.Tensor | None = None, out_dtype: torch.dtype = torch.bfloat16,
               config: dict[str, Any] | None = None, w_layout: str = "plain") -> torch.Tensor:  # fmt: skip
    """C[M, N] = A . W^T with W MXFP4 ([N, K/2] uint8 codes, [N, K/32] uint8 E8M0; or `w_layout` "swz128*" from
    `relayout_weight`: codes re-laid out, scale rows padded to 16 bytes).

    A is bf16/fp16 [M, K] (quantized to MXFP4 with the reference rule when quant_a, else used as is: w4a16), or
    already MXFP4: packed uint8 [M, K/2] with `a_scale` [M, K/32] (any strides).
    """
    m, n, k = a.shape[0], w.shape[0], w.shape[1] * 2
    if out is None:
        out = torch.empty(m, n, dtype=out_dtype, device=a.device)
    if m == 0:
        return out
    arch = config_arch(a.device)
    cfg = config if config is not None else pick_config(m, n, k, arch)
    amd = is_amd(arch) and a.device.type == "cuda"
    if a.stride(-1) != 1:
        a = a.contiguous()
    if w_layout not in LAYOUTS or (w_layout != "plain" and amd):
        raise NotImplementedError(f"weight layout {w_layout!r} on {arch}")
    lay = w_layout
    if lay != "plain":  # the bucket's overrides for swz128 weights (fewer registers: more stages fit)
        cfg = {**cfg, **cfg.get("swz", {})}
    if a_scale is not None:
        return launch_gemm(a.view(torch.uint8), a_scale.view(torch.uint8), w, w_scale, out, 2, cfg, arch, amd, lay)
    route = route_for(cfg, n, k)
    if route == "dequant_w" and not amd:
        a_eff = quantize(a, qdq=True)[0] if quant_a else a
        return torch.matmul(a_eff, dequantize_weight(w, w_scale, lay).t(), out=out)
    if not quant_a:
        return launch_gemm(a, None, w, w_scale, out, 0, {**cfg, **cfg.get("a16", {})}, arch, False, lay)
    if route == "fused":
        return launch_gemm(a, None, w, w_scale, out, 1, cfg, arch, amd, lay)
    q, s = quantize(a, qdq=not amd)
    return launch_gemm(q, s, w, w_scale, out, 2 if amd else 0, cfg, arch, amd, lay)
