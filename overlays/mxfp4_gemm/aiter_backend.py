"""aiter backend (ROCm only): the kernels stock SGLang 0.5.17 calls for quark w_mxfp4_a_mxfp4 linears.

UNEXECUTED: written against aiter's public Triton API as SGLang imports it (aiter.ops.triton.quant.
dynamic_mxfp4_quant, aiter.ops.triton.gemm_afp4wfp4.gemm_afp4wfp4); no ROCm machine has run it.
"""

from __future__ import annotations

import torch

from speedrun.overlays.hooks import require_aiter


def aiter_gemm(a: torch.Tensor, w: torch.Tensor, w_scale: torch.Tensor, *, a_scale: torch.Tensor | None = None,
               out: torch.Tensor | None = None, out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:  # fmt: skip
    require_aiter("mxfp4_gemm")
    from aiter.ops.triton.gemm_afp4wfp4 import gemm_afp4wfp4
    from aiter.ops.triton.quant import dynamic_mxfp4_quant

    if a_scale is None:
        a, a_scale = dynamic_mxfp4_quant(a)
    if out is None:
        out = torch.empty(a.shape[0], w.shape[0], dtype=out_dtype, device=a.device)
    gemm_afp4wfp4(a, w, a_scale, w_scale, out_dtype, out)
    return out
