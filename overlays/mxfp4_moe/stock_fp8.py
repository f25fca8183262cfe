"""Large-M route for quark w4a4 (DeepSeek-R1 MXFP4) experts on CUDA: stock SGLang 0.5.17's FP8 block fused MoE.

Why: at prefill sizes stock's FP8 block MoE beats our MXFP4 kernels on sm90 (configs/sm90.json's "why" has the
numbers), and stock cannot run MXFP4 experts on CUDA at all. So above the config table's threshold (the buckets
with `route: stock_fp8`) the layer's experts are converted to FP8 e4m3 with one fp32 scale_inv per 128x128 block
(mx/fp8.py's to_fp8: exact for tiles whose block scales lie within 14 binades of the tile's largest)
into ONE scratch buffer per device, shared by every MoE layer (layers run one after another), and handed to
stock's own `fused_experts`, called as stock calls it for DeepSeek-R1's FP8 checkpoint on sm90 (`fused_experts`
below says how). The scratch holds the largest layer's experts: for the DeepSeek-R1 TP8 shard (E 257, 2N 512,
H 7168) 0.94 GB of w13 + 0.47 GB of w2 (+ 0.3 MB of scales), allocated at load time (`reserve`) so SGLang's
KV-cache sizing, which runs after loading, sees it.

Activations: stock quantizes them to FP8 per token and 128-column group inside that call, so this route computes
w4a8 where our kernels emulate w4a4 (activations rounded to MXFP4): more precise, not less. The route costs the
conversion (~1.9 GB of traffic per call at the shard's shape) on top of stock's MoE. ROCm never takes it (aiter
is the ROCm path): `api.make_plan` enables it only for CUDA archs.

SGLang is imported inside the functions: this module loads (and the conversion runs) without it.
"""

from __future__ import annotations

from typing import Any

import torch

from speedrun.overlays.mx.fp8 import FP8_BLOCK, Resident, Scratch, carve, fp8_bytes, to_fp8

SCRATCH = Scratch()  # the MoE layers' one buffer per device (the GEMM's linears have their own)
RESIDENT = Resident()  # or each layer's own, kept (setting mxfp4_moe_stock_fp8 resident)


def layer_bytes(w: Any, hidden: int) -> int:
    """Bytes of one layer's experts in FP8 blocks (w13 and w2 with their scales)."""
    return fp8_bytes(w.num_experts, 2 * w.inter, hidden) + fp8_bytes(w.num_experts, hidden, w.inter)


def experts_fp8(w: Any, hidden: int, asm: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """An `api.MoeWeights` layer's experts as (w13, w13 scale_inv, w2, w2 scale_inv) in FP8 blocks: its resident
    copy (`resident`) when it has one, else written into the device's scratch now. w13 [E, 2N, hidden] rows
    [gate ; up] as SGLang's w13, w2 [E, hidden, N]."""
    if w.fp8 is not None:
        return w.fp8
    return _convert(w, hidden, asm, SCRATCH.get(w.w13.device, layer_bytes(w, hidden)))


def resident(w: Any, hidden: int, asm: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Load time (setting mxfp4_moe_stock_fp8 resident): the layer's experts converted once into their own buffer,
    kept for every large-M call (no per-call conversion: ~1.9 GB of traffic per call at the DeepSeek shard)."""
    return _convert(w, hidden, asm, RESIDENT.alloc(w.w13, layer_bytes(w, hidden)))


def _convert(w: Any, hidden: int, asm: bool, buf: torch.Tensor) -> tuple[torch.Tensor, ...]:
    e, n2, n = w.num_experts, 2 * w.inter, w.inter
    q13, s13, at = carve(buf, 0, e, n2, hidden)
    q2, s2, _ = carve(buf, at, e, hidden, n)
    to_fp8(w.w13, w.w13_scale, hidden, q13, s13, asm, w.row_group)
    to_fp8(w.w2[:, :hidden], w.w2_scale[:, :hidden], n, q2, s2, asm, w.row_group)
    return q13, s13, q2, s2


def runner_config(e: int, hidden: int, inter: int, topk: int, routed_scaling_factor: float = 1.0,
                  inplace: bool = False, num_experts: int | None = None) -> Any:  # fmt: skip
    """The MoeRunnerConfig stock's FusedMoE builds for DeepSeek-R1's experts (SiLU-gated; `num_experts` the
    global count: differs from `e` only under EP, when stock filters the other ranks' ids)."""
    from sglang.srt.layers.moe import MoeRunnerConfig

    return MoeRunnerConfig(num_experts=num_experts or e, num_local_experts=e, hidden_size=hidden,
                           intermediate_size_per_partition=inter, top_k=topk, params_dtype=torch.bfloat16,
                           activation="silu", inplace=inplace, routed_scaling_factor=routed_scaling_factor)  # fmt: skip


def fused_experts(x: torch.Tensor, w13: torch.Tensor, s13: torch.Tensor, w2: torch.Tensor, s2: torch.Tensor,
                  topk_ids: torch.Tensor, topk_weights: torch.Tensor, cfg: Any) -> torch.Tensor:  # fmt: skip
    """Stock DeepSeek-R1 FP8 MoE on sm90, as sglang 0.5.17 calls it:
    - models/deepseek_v2.py: on CUDA sm80+ at TP (no EP, no DeepEP) `determine_num_fused_shared_experts` fuses the
      shared expert into the routed ones: E = 256 + 1, top-k = 8 + 1 (the last slot the shared expert, weight
      1 / routed_scaling_factor before renormalization, topk.py `biased_grouped_topk_impl`).
    - quantization/fp8.py `Fp8MoEMethod.create_moe_runner`: moe_runner_backend "auto" (the default; no model
      override for DeepSeek on sm90) -> DEEP_GEMM only with a DeepEP/Mooncake/NIXL all-to-all, else TRITON.
    - moe_runner/runner.py: the standard dispatcher + TRITON runner use the registered fused function
      moe_runner/triton.py `fused_experts_none_to_triton` -> triton_utils/fused_moe.py `fused_experts` with
      use_fp8_w8a8=True, w13/w2_weight_scale_inv, a1/a2 scale None (per-token-group-128 FP8 activation quant
      inside `invoke_fused_moe_kernel`), block_shape [128, 128]; the config from `try_get_optimal_moe_config`
      (tuned JSON for E=257,N=256,<device>,fp8_w8a8,block_shape=[128, 128] if it ships, else the block default).
    `cfg` is `runner_config`'s (stock's FusedMoE keeps inplace=True for DeepSeek: the output overwrites x)."""
    from sglang.srt.layers.moe.moe_runner.triton_utils.fused_moe import fused_experts as stock
    from sglang.srt.layers.moe.topk import StandardTopKOutput

    topk = StandardTopKOutput(topk_weights, topk_ids, None)  # router logits: unused by fused_experts
    return stock(x, w13, w2, topk, cfg, use_fp8_w8a8=True, w1_scale=s13, w2_scale=s2, a1_scale=None, a2_scale=None,
                 block_shape=FP8_BLOCK)  # fmt: skip


def fused_moe_stock_fp8(
    x: torch.Tensor,
    w: Any,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    routed_scaling_factor: float = 1.0,
    num_experts: int | None = None,
) -> torch.Tensor:
    """The route: `w`'s experts converted into the scratch, then stock's FP8 block MoE (out of place: x is the
    layer's input, which the caller may still hold). [M, H] bf16 like `api.fused_moe_mxfp4`."""
    h = x.shape[1]
    asm = x.device.type == "cuda" and torch.version.hip is None
    q13, s13, q2, s2 = experts_fp8(w, h, asm)
    cfg = runner_config(w.num_experts, h, w.inter, topk_ids.shape[1], routed_scaling_factor, False, num_experts)
    return fused_experts(x, q13, s13, q2, s2, topk_ids, topk_weights, cfg)


__all__ = ["FP8_BLOCK", "RESIDENT", "SCRATCH", "experts_fp8", "fp8_bytes", "fused_experts", "fused_moe_stock_fp8",
           "layer_bytes", "resident", "runner_config", "to_fp8"]  # fmt: skip
