"""Pure-torch reference of the MXFP4 GEMM (fp32 maths on the exact values the kernels multiply)."""

from __future__ import annotations

import torch

from speedrun.overlays.mx.format import dequant_mxfp4
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
