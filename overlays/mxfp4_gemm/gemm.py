"""Host side of the MXFP4 GEMM: config lookup per (N, K) and M bucket, route choice, split-K, launch.

Routes (per config entry, key "route"):
- "fused": one launch; bf16 activations are quantized to MXFP4 inside the GEMM's A-load (decode sizes).
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


def config_arch(device: torch.device) -> str:
    """Which config table a device uses ("cpu" = the interpreter, which uses the sm90 table)."""
    if device.type != "cuda":
        return "sm90"
    arch = current_arch()
    if is_amd(arch) and arch != "gfx950":
        raise NotImplementedError(f"mxfp4_gemm has no config for {arch} (needs gfx950 scaled MFMA or CUDA)")
    return arch


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
    """Explicit SPLIT_K, or enough splits to give every SM ~2 CTAs while keeping >= MIN_K_TILES per split."""
    s = int(cfg.get("SPLIT_K", 0))
    if s <= 0:
        s = 1 if tiles >= sms else math.ceil(2 * sms / tiles)
        s = min(s, max(1, k_tiles // int(cfg.get("MIN_K_TILES", 2))), 32)
    s = max(1, min(s, k_tiles))
    return math.ceil(k_tiles / math.ceil(k_tiles / s))  # no empty splits


def _block_k(cfg: dict[str, Any], k: int) -> int:
    bk = int(cfg["BLOCK_K"])
    while bk > 32 and bk > k:
        bk //= 2
    return bk


def launch_gemm(a: torch.Tensor, a_scale: torch.Tensor | None, w: torch.Tensor, w_scale: torch.Tensor,
                out: torch.Tensor, a_mode: int, cfg: dict[str, Any], arch: str,
                dot_scaled: bool) -> torch.Tensor:  # fmt: skip
    """One GEMM launch: out[M, N] = A . W^T; a is bf16 [M, K] (modes 0/1) or packed [M, K/2] (mode 2)."""
    from speedrun.overlays.mxfp4_gemm.kernel import mxfp4_gemm_kernel

    m, n, k = out.shape[0], w.shape[0], w.shape[1] * 2
    bm, bn, bk = int(cfg["BLOCK_M"]), int(cfg["BLOCK_N"]), _block_k(cfg, k)
    tiles = math.ceil(m / bm) * math.ceil(n / bn)
    k_tiles = math.ceil(k / bk)
    s = split_k(cfg, tiles, k_tiles, sm_count(out.device))
    part = torch.empty(tiles * s * bm * bn if s > 1 else 1, dtype=torch.float32, device=out.device)
    cnt = splitk_counters(out.device, tiles) if s > 1 else part
    sa = a_scale if a_scale is not None else w_scale  # unused pointer in modes 0/1
    mxfp4_gemm_kernel[(tiles, s)](
        a, sa, w, w_scale, out, part, cnt, m, n, k,
        a.stride(0), sa.stride(0), sa.stride(1), w.stride(0), w_scale.stride(0), out.stride(0),
        A_MODE=a_mode, DOT_SCALED=dot_scaled, DOT_F32=out.device.type == "cpu", BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
        SPLIT_K=s, GROUP=int(cfg.get("GROUP", 1)), EVEN_K=k % bk == 0,
        **deq_flags({**cfg, "BLOCK_K": bk}, out.device, dot_scaled), **launch_options(cfg, arch),
    )  # fmt: skip
    return out


def route_for(cfg: dict[str, Any], n: int, k: int) -> str:
    """The config's route, except "prequant" falls back to "fused" for weights under "fused_below_nk" elements:
    there the quantizer's extra launch costs more than re-quantizing A in every CTA (decode sizes)."""
    route = cfg.get("route", "fused")
    if route == "prequant" and n * k < int(cfg.get("fused_below_nk", 0)):
        return "fused"
    return route


def deq_flags(cfg: dict[str, Any], device: torch.device, dot_scaled: bool) -> dict[str, Any]:
    """W_DEQ from the config's "deq" (0 generic, 1 fast interleaved, 2 fast halves, 3 words; 3 needs BLOCK_K >= 128,
    else 2); inline PTX only on CUDA."""
    deq = 0 if dot_scaled else int(cfg.get("deq", 0))
    if deq == 3 and int(cfg["BLOCK_K"]) < 128:
        deq = 2
    return {"W_DEQ": deq, "W_ASM": deq > 0 and device.type == "cuda" and torch.version.hip is None}


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


def dequantize_weight(w: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
    """Triton W dequantization to bf16 [N, K] (contiguous inputs)."""
    from speedrun.overlays.mxfp4_gemm.kernel import mxfp4_dequant_kernel

    n, k = w.shape[0], w.shape[1] * 2
    out = torch.empty(n, k, dtype=torch.bfloat16, device=w.device)
    bn, bk = 32, 256 if k % 256 == 0 else 32
    grid = (math.ceil(n / bn), math.ceil(k / bk))
    mxfp4_dequant_kernel[grid](w.contiguous(), w_scale.contiguous(), out, n, k, BLOCK_N=bn, BLOCK_K=bk, num_warps=4)
    return out


def mxfp4_gemm(a: torch.Tensor, w: torch.Tensor, w_scale: torch.Tensor, *, a_scale: torch.Tensor | None = None,
               quant_a: bool = True, out: torch.Tensor | None = None, out_dtype: torch.dtype = torch.bfloat16,
               config: dict[str, Any] | None = None) -> torch.Tensor:  # fmt: skip
    """C[M, N] = A . W^T with W MXFP4 ([N, K/2] uint8 codes, [N, K/32] uint8 E8M0).

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
    if a_scale is not None:
        return launch_gemm(a.view(torch.uint8), a_scale.view(torch.uint8), w, w_scale, out, 2, cfg, arch, amd)
    route = route_for(cfg, n, k)
    if route == "dequant_w" and not amd:
        a_eff = quantize(a, qdq=True)[0] if quant_a else a
        return torch.matmul(a_eff, dequantize_weight(w, w_scale).t(), out=out)
    if not quant_a:
        return launch_gemm(a, None, w, w_scale, out, 0, {**cfg, **cfg.get("a16", {})}, arch, False)
    if route == "fused":
        return launch_gemm(a, None, w, w_scale, out, 1, cfg, arch, amd)
    q, s = quantize(a, qdq=not amd)
    return launch_gemm(q, s, w, w_scale, out, 2 if amd else 0, cfg, arch, amd)
