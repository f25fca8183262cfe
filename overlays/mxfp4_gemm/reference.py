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
