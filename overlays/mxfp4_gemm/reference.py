"""Pure-torch reference of the MXFP4 GEMM (fp32 maths on the exact values the kernels multiply)."""

from __future__ import annotations

import torch

from speedrun.overlays.mx.format import dequant_mxfp4
from speedrun.overlays.mx.fp8 import FP8_BLOCK
from speedrun.overlays.mx.quant import qdq_mxfp4


def mxfp4_gemm_ref(a: torch.Tensor, w: torch.Tensor, w_scale: torch.Tensor, *, a_scale: torch.Tensor | None = None,
                   quant_a: bool = True, out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:  # fmt: skip
    """C = A . W^T. A: bf16 [M, K] (MXFP4-quantized first when quant_a) or packed [M, K/2] + a_scale [M, K/32]."""
    wf = dequant_mxfp4(w, w_scale, torch.float32)
    if a_scale is not None:
        af = dequant_mxfp4(a.view(torch.uint8), a_scale.view(torch.uint8), torch.float32)
    elif quant_a:
        af = qdq_mxfp4(a, torch.float32)
    else:
        af = a.float()
    return (af @ wf.t()).to(out_dtype)


def random_mxfp4_weight(n: int, k: int, *, device: str | torch.device = "cpu", seed: int = 0,
                        scale_lo: int = 118, scale_hi: int = 124) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Random packed codes [N, K/2] and E8M0 scales [N, K/32] in a realistic range (2**-9 .. 2**-4)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    packed = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, generator=g)
    scales = torch.randint(scale_lo, scale_hi + 1, (n, k // 32), dtype=torch.uint8, generator=g)
    return packed.to(device), scales.to(device)


def qdq_edge_blocks(step: int = 1, subnormals: bool = True) -> torch.Tensor:
    """bf16 [B, 32] blocks covering the activation quantizer's cases: block maxima of every exponent 2**-126 ..
    2**99 with mantissas just below / at the 1.75 rounding point and the extremes, each block's other 31 elements
    walking every bf16 value (both signs, subnormals included) from 12 binades below the block scale to the block
    maximum. `step` > 1 keeps every step-th block maximum (smaller, for slow paths like the interpreter).
    `subnormals` False leaves out subnormal elements: GPUs may flush them, and Triton 3.6's interpreter widens
    them to fp32 wrongly (0x0003 -> 2**-127)."""
    rows = []
    for field in range(1, 227, step):
        for mant in (0x00, 0x3F, 0x5F, 0x60, 0x7F):
            amax = (field << 7) | mant
            lo = max(field - 14, 0 if subnormals else 1) << 7
            mags = torch.arange(lo, amax + 1, dtype=torch.int32)
            vals = torch.cat((mags, mags | 0x8000))
            vals = torch.nn.functional.pad(vals, (0, -len(vals) % 31))  # pad with +0.0
            block = torch.cat((torch.full((len(vals) // 31, 1), amax, dtype=torch.int32), vals.view(-1, 31)), 1)
            rows.append(block)
    bits = torch.cat(rows).to(torch.int16)  # wraps 0x8000.. to negative int16: the same bit patterns
    return bits.view(torch.bfloat16)


def fp8_activation_bound(a: torch.Tensor, wf: torch.Tensor) -> torch.Tensor:
    """Elementwise bound on |stock_fp8 route - A . Wf^T| (the exact-weight fp32 product). The weight is exact (its
    FP8 conversion carries MXFP4 values exactly), so the error is stock's per-token-group FP8 activation
    quantization (scale s = group amax / 448, q = RNE e4m3(a / s)): each element is off by at most 2**-4 |a| (half
    an ulp of e4m3's 3-bit mantissa) in the normal range, or 2**-10 s under it (half of the 2**-9 subnormal step).
    Summed over K against |W|: 2**-4 |A| |W|^T + 2**-10 S |W|^T. On top: DeepGEMM's fp32 accumulation (promoted
    every 128 K) and the bf16 output rounding (2**-9 relative): 2**-8 |C| covers both."""
    group = FP8_BLOCK[1]  # stock quantizes A per token and per K block of the weight's block shape
    af = a.float()
    s = af.abs().unflatten(1, (-1, group)).amax(-1, keepdim=True).div(torch.finfo(torch.float8_e4m3fn).max)
    s = s.expand(-1, -1, group).flatten(1)
    wa = wf.abs().t()
    return 2.0**-4 * (af.abs() @ wa) + 2.0**-10 * (s @ wa) + 2.0**-8 * (af @ wf.t()).abs()
