"""aiter backend (ROCm only) for quark w_mxfp4_a_mxfp4 linears. Two kernels (settings
mxfp4_gemm_aiter_kernel, recipe overlays.mxfp4_gemm.aiter_kernel):

- `a4w4` (default): aiter's `gemm_a4w4` (CK blockscale / asm) on preshuffled operands. The weight and its scales
  are shuffled once at load (`preshuffle`: shuffle_weight (16, 16) + e8m0_shuffle, kept beside the plain copies,
  which DeepSeek's post_load_weights and the other backends read); per call, A is quantized by our bit-exact
  quantizer (mx/quant.py, aiter's rule) and its scales shuffled with a graph-safe permute.
- `afp4wfp4`: aiter's Triton `gemm_afp4wfp4` on plain layouts with aiter's `dynamic_mxfp4_quant`, as stock
  SGLang 0.5.17 calls it.

UNEXECUTED: no ROCm machine has run either. The layouts are checked on the CPU against aiter's documented
definitions (mx/aiter_layouts.py, mx/test_aiter_layouts.py); the calls follow aiter's signatures
(aiter/ops/gemm_op_a4w4.py: A/B [M|N, K/2] fp4x2, A_scale/B_scale e8m0 padded, out [M, N] bf16). Rows of A and
of the output are padded to the 256 rows e8m0_shuffle pads A's scales to.
"""

from __future__ import annotations

import torch

from speedrun.overlays import environ
from speedrun.overlays.hooks import require_aiter


def aiter_kernel() -> str:
    """The settings' mxfp4_gemm_aiter_kernel, as loaded at registration (overlays/environ.py validates it)."""
    return environ.settings().mxfp4_gemm_aiter_kernel


def preshuffle(layer: torch.nn.Module) -> None:
    """Once at load: gemm_a4w4's weight and scale layouts, as extra (non-parameter) attributes of the layer."""
    from speedrun.overlays.mx.aiter_layouts import e8m0_shuffle_view, shuffle_weight_view

    layer.speedrun_aiter_w = shuffle_weight_view(layer.weight.data)
    layer.speedrun_aiter_w_scale = e8m0_shuffle_view(layer.weight_scale.data)


def aiter_gemm(a: torch.Tensor, w: torch.Tensor, w_scale: torch.Tensor, *, a_scale: torch.Tensor | None = None,
               out: torch.Tensor | None = None, out_dtype: torch.dtype = torch.bfloat16,
               layer: torch.nn.Module | None = None) -> torch.Tensor:  # fmt: skip
    require_aiter("mxfp4_gemm")
    if aiter_kernel() == "a4w4" and layer is not None and hasattr(layer, "speedrun_aiter_w"):
        return _a4w4(a, layer, a_scale, out, out_dtype)
    from aiter.ops.triton.gemm_afp4wfp4 import gemm_afp4wfp4
    from aiter.ops.triton.quant import dynamic_mxfp4_quant

    if a_scale is None:
        a, a_scale = dynamic_mxfp4_quant(a)
    if out is None:
        out = torch.empty(a.shape[0], w.shape[0], dtype=out_dtype, device=a.device)
    gemm_afp4wfp4(a, w, a_scale, w_scale, out_dtype, out)
    return out


def _a4w4(a: torch.Tensor, layer: torch.nn.Module, a_scale: torch.Tensor | None, out: torch.Tensor | None,
          out_dtype: torch.dtype) -> torch.Tensor:  # fmt: skip
    from aiter.ops.gemm_op_a4w4 import gemm_a4w4

    from speedrun.overlays.mx.aiter_layouts import e8m0_shuffle_view
    from speedrun.overlays.mx.quant import quant_mxfp4

    a_q, a_s = (a, a_scale) if a_scale is not None else quant_mxfp4(a)
    m, n = a_q.shape[0], layer.speedrun_aiter_w.shape[0]
    a_s = e8m0_shuffle_view(a_s.contiguous())  # rows padded to 256
    a_q = torch.nn.functional.pad(a_q, (0, 0, 0, a_s.shape[0] - m))
    y = torch.empty(a_s.shape[0], n, dtype=out_dtype, device=a.device)
    gemm_a4w4(a_q, layer.speedrun_aiter_w, a_s, layer.speedrun_aiter_w_scale, y, bpreshuffle=True)
    return out.copy_(y[:m]) if out is not None else y[:m]
