"""GEMM bench baselines: the FP8 block GEMM stock SGLang 0.5.17 serves DeepSeek-R1's FP8 checkpoint with on sm90.

Which function (read in sglang 0.5.17):
- `srt/layers/quantization/fp8.py: Fp8LinearMethod.__init__` sets `self.w8a8_block_fp8_linear =
  dispatch_w8a8_block_fp8_linear()` for block-quantized (128x128) FP8 linears; `Fp8LinearMethod.apply` calls it
  with the bf16 activation, the e4m3 weight [N, K], block_size [128, 128], `weight_scale_inv` fp32
  [N/128, K/128] and input_scale None, so the activation's per-token-group (128) FP8 quantization happens inside
  the call and is timed here too.
- `srt/layers/quantization/fp8_utils.py: dispatch_w8a8_block_fp8_linear` with `--fp8-gemm-backend auto` (the
  default) -> `_dispatch_auto_backend`: `deepgemm_w8a8_block_fp8_linear_with_fallback` whenever
  `deep_gemm_wrapper.ENABLE_JIT_DEEPGEMM` (sm90 or newer, `import deep_gemm` works — sgl-deep-gemm==0.1.5.post1
  is a dependency of sglang 0.5.17 — and SGLANG_ENABLE_JIT_DEEPGEMM not 0); otherwise, on an H100 (not Blackwell,
  not sm120, no aiter), `triton_w8a8_block_fp8_linear` (`w8a8_block_fp8_matmul_triton`). sgl-kernel's CUTLASS
  `fp8_blockwise_scaled_mm` is only reached with `--fp8-gemm-backend cutlass`, which 0.5.17 refuses outside
  sm120. DeepGEMM falls back to the Triton kernel itself when N % 64 or K % 128 is not 0.
- `Fp8LinearMethod.process_weights_after_loading_block_quant` leaves the weight and its fp32 scales as loaded on
  sm90 (the UE8M0 re-quantization is Blackwell DeepGEMM only).

So two rows: `fp8_deepgemm` (stock's default on an H100 with sglang's full dependencies; the call is the serving
route's own, overlays/mxfp4_gemm/stock_fp8.py `fp8_linear`) and `fp8_triton` (what
stock runs where deep_gemm is missing, e.g. a slimmed install, or with SGLANG_ENABLE_JIT_DEEPGEMM=0). The
weights are our MXFP4 weights carried exactly in FP8 blocks (eval/kernels/stock.py: fp8_block_quant), so every
row multiplies the same matrix.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from speedrun.eval.kernels.results import FAILURES, reason
from speedrun.eval.kernels.stock import deepgemm_available, fp8_block_quant, no_deepgemm_precompile, stock_config

BLOCK = [128, 128]
MISSING_DEEPGEMM = (
    "deep_gemm is not importable here: stock sglang 0.5.17 installs sgl-deep-gemm==0.1.5.post1 and "
    "then runs DeepGEMM for these linears on sm90; install that wheel to time this row"
)
Fp8Linear = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def fp8_weights(w_bf16: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(e4m3 weight [N, K], fp32 weight_scale_inv [N/128, K/128]) as DeepSeek's FP8 checkpoint stores them."""
    return fp8_block_quant(w_bf16)


def deepgemm_setup() -> None:
    """Before calling stock's DeepGEMM linear in a bench process (this row, and our stock_fp8 route): SGLang's
    default config published, DeepGEMM compiling only the Ms the bench runs; RuntimeError when it is unavailable."""
    stock_config()
    if not deepgemm_available():
        raise RuntimeError(MISSING_DEEPGEMM)
    no_deepgemm_precompile()


def fp8_deepgemm() -> Fp8Linear:
    """Stock's sm90 default: DeepGEMM with the per-token-group activation quant, called as Fp8LinearMethod.apply
    (the same call as the serving route's, imported from it)."""
    from speedrun.overlays.mxfp4_gemm.stock_fp8 import fp8_linear

    deepgemm_setup()
    return fp8_linear


def fp8_triton() -> Fp8Linear:
    """Stock's sm90 path without deep_gemm: per-token-group quant + w8a8_block_fp8_matmul_triton."""
    stock_config()
    from sglang.srt.layers.quantization.fp8_utils import triton_w8a8_block_fp8_linear as fn

    return lambda a, w, s: fn(input=a, weight=w, block_size=BLOCK, weight_scale=s, input_scale=None, bias=None)


def stock_dispatch() -> str:
    """The function stock's dispatcher picks in this process (what an FP8 DeepSeek server here would call)."""
    stock_config()
    from sglang.srt.layers.quantization.fp8_utils import dispatch_w8a8_block_fp8_linear

    return dispatch_w8a8_block_fp8_linear().__name__


FP8_BUILDERS: dict[str, Callable[[], Fp8Linear]] = {"fp8_deepgemm": fp8_deepgemm, "fp8_triton": fp8_triton}


def describe() -> dict[str, Any]:
    """For the results file's meta: which stock function each FP8 row is, and what stock dispatches to here."""
    try:
        here = stock_dispatch()
    except FAILURES as exc:  # no SGLang: the rows say so too
        here = f"unknown ({reason(exc)})"[:200]
    return {"fp8_deepgemm": "sglang 0.5.17 fp8_utils.deepgemm_w8a8_block_fp8_linear_with_fallback (sm90 default)",
            "fp8_triton": "sglang 0.5.17 fp8_utils.triton_w8a8_block_fp8_linear (sm90 without deep_gemm)",
            "stock_dispatch_here": here}  # fmt: skip
