"""Large-M route for quark w4a4 (DeepSeek-R1 MXFP4) linears on CUDA: stock SGLang 0.5.17's FP8 block GEMM.

Why: sm90 has no FP4 MMA, and at prefill sizes stock's FP8 block GEMM (DeepGEMM) beats dequantizing W to bf16
for cuBLAS (configs/sm90.json's m>1024 "why" has the numbers). So for the table's `route: stock_fp8` buckets the
layer's weight is converted to FP8 e4m3 with one fp32 scale_inv per 128x128 block on every call (mx/fp8.py: exact
for tiles whose block scales lie within 14 binades of the tile's largest) into ONE scratch buffer per device,
shared by every linear (they run one after another) and sized at load time for the process's largest one
(`reserve`, before SGLang sizes the KV cache), then handed to the function stock calls for DeepSeek-R1's FP8
checkpoint on sm90 (`fp8_linear` says which; eval's `fp8_deepgemm` bench row calls it too).

Semantics: stock quantizes the bf16 activation to FP8 per token and 128-column group inside that call, so prefill
computes w4a8 where the decode routes emulate w4a4 (activations rounded to MXFP4): more precise, not less. The
route costs the conversion (N*K/2 bytes read, N*K written: ~23 MB at 2112x7168) on top of stock's GEMM. Where
stock's DeepGEMM path is unavailable (`deepgemm_missing`) or off CUDA (ROCm, the CPU interpreter) the plan runs
those buckets as `dequant_w` and says why (api.stock_routes). DeepGEMM JIT-compiles per (N, K) at first use as
it does for stock's FP8 checkpoint (SGLANG_JIT_DEEPGEMM_PRECOMPILE decides how many Ms at once).

SGLang is imported inside the functions: this module loads (and the conversion runs) without it.
"""

from __future__ import annotations

import functools

import torch

from speedrun.overlays.mx.fp8 import FP8_BLOCK, Resident, Scratch, carve, fp8_bytes, to_fp8
from speedrun.overlays.mxfp4_gemm.config import Layout

SCRATCH = Scratch()  # the linears' one buffer per device (the MoE's experts have their own)
RESIDENT = Resident()  # or each linear's own, kept (setting mxfp4_gemm_stock_fp8 resident)


def weight_bytes(n: int, k: int) -> int:
    """Scratch bytes one [N, K] weight needs in FP8 blocks."""
    return fp8_bytes(1, n, k)


def reserve(device: torch.device | str, n: int, k: int) -> None:
    """Load time: make the device's scratch hold an [N, K] weight (grown for the largest linear only)."""
    SCRATCH.reserve(device, weight_bytes(n, k))


@functools.cache
def deepgemm_missing() -> str | None:
    """Why stock's DeepGEMM FP8 linear cannot run in this process (one line), None when it can: deep_gemm must
    import (sgl-deep-gemm, a dependency of sglang 0.5.17) and SGLang must enable it (its ENABLE_JIT_DEEPGEMM)."""
    try:
        import deep_gemm  # noqa: F401
    except Exception as exc:  # ImportError, or its CUDA setup failing at import
        return f"deep_gemm does not import ({type(exc).__name__}: {exc})"[:200]
    try:
        from sglang.srt.layers import deep_gemm_wrapper
    except Exception as exc:
        return f"sglang's deep_gemm_wrapper does not import ({type(exc).__name__}: {exc})"[:200]
    if not deep_gemm_wrapper.ENABLE_JIT_DEEPGEMM:
        return "SGLang disables DeepGEMM here (SGLANG_ENABLE_JIT_DEEPGEMM=0, or a GPU before sm90)"
    return None


def weight_fp8(w: torch.Tensor, w_scale: torch.Tensor, layout: Layout | str, asm: bool
               ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The layer's MXFP4 weight (plain uint8 [N, K/2], or swz128 with padded scale rows) as (e4m3 [N, K], fp32
    scale_inv [N/128, K/128]) written into the device's scratch (`asm`: sm90 inline-PTX decode)."""
    n, k = w.shape[0], w.shape[1] * 2  # swz128 keeps the shape when K % 128 == 0 (api.relayout_weight)
    return _convert(w, w_scale, layout, asm, SCRATCH.get(w.device, weight_bytes(n, k)))


def resident(w: torch.Tensor, w_scale: torch.Tensor, layout: Layout | str, asm: bool
             ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Load time (setting mxfp4_gemm_stock_fp8 resident): `weight_fp8` into a buffer of the layer's own, kept for
    every large-M call instead of converting per call."""
    n, k = w.shape[0], w.shape[1] * 2
    return _convert(w, w_scale, layout, asm, RESIDENT.alloc(w, weight_bytes(n, k)))


def _convert(w: torch.Tensor, w_scale: torch.Tensor, layout: Layout | str, asm: bool, buf: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    n, k = w.shape[0], w.shape[1] * 2
    q, qs, _ = carve(buf, 0, 1, n, k)
    codes = w if Layout(layout) == Layout.PLAIN else w.view(torch.int32)  # int32 words: the swz128 decode
    to_fp8(codes, w_scale, k, q[0], qs[0], asm, Layout(layout).row_group)
    return q[0], qs[0]


def fp8_linear(a: torch.Tensor, w: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
    """Stock's FP8 block linear on sm90, called as `Fp8LinearMethod.apply` calls the function its
    `dispatch_w8a8_block_fp8_linear` picks there with DeepGEMM (the auto backend):
    `deepgemm_w8a8_block_fp8_linear_with_fallback(input, weight, [128, 128], weight_scale_inv, None, None)`, which
    quantizes the bf16 activation per token-group of 128 itself (and runs stock's Triton kernel when N % 64 or
    K % 128 is not 0, or the activation is not bf16). Returns [M, N] in a's dtype."""
    from sglang.srt.layers.quantization.fp8_utils import deepgemm_w8a8_block_fp8_linear_with_fallback as fn

    return fn(input=a, weight=w, block_size=FP8_BLOCK, weight_scale=w_scale, input_scale=None, bias=None)


def gemm_stock_fp8(a: torch.Tensor, w: torch.Tensor, w_scale: torch.Tensor, layout: Layout | str,
                   out: torch.Tensor | None = None, out_dtype: torch.dtype = torch.bfloat16,
                   fp8: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:  # fmt: skip
    """The route: C[M, N] = A . W^T with W in FP8 blocks (`fp8`, the layer's resident copy, else converted into the
    scratch now), then stock's FP8 block linear on bf16 A; written into `out` when given, else returned in
    `out_dtype` (as api.mxfp4_gemm's other routes)."""
    asm = a.is_cuda and torch.version.hip is None
    y = fp8_linear(a, *(fp8 if fp8 is not None else weight_fp8(w, w_scale, layout, asm)))
    if out is not None:
        return out.copy_(y)
    return y if y.dtype == out_dtype else y.to(out_dtype)


__all__ = ["RESIDENT", "SCRATCH", "deepgemm_missing", "fp8_linear", "gemm_stock_fp8", "reserve", "resident",
           "weight_bytes", "weight_fp8"]  # fmt: skip
