"""Bench baselines, set up the way SGLang 0.5.17 sets them up (GPU only; each builder may raise).

Every builder takes SGLang-layout raw experts (`Raw`: what the loader leaves before
process_weights_after_loading) and returns (prepare, run): `prepare(topk_ids, topk_weights, logits)` is untimed
routing state, `run(x, state) -> out` is what the bench times.
- triton_kernels: `_swizzle_mxfp4` + `triton_kernel_fused_experts_with_bias` (matmul_ogs), GPT-OSS Hopper default.
- flashinfer: `Mxfp4MoEMethod._process_weights_for_sm90_cutlass` + `cutlass_fused_moe(use_w4_group_scaling)`.
- dequant_fused_moe: experts dequantized to bf16 once, then SGLang's Triton fused-MoE kernel
  (`invoke_fused_moe_kernel`, SGLang's default bf16 block config), SiLU-and-mul, top-k sum.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch

from speedrun.overlays.mx.format import dequant_mxfp4

Prepare = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Any]
Run = Callable[[torch.Tensor, Any], torch.Tensor]


def _ids_weights(ids: torch.Tensor, tw: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return ids, tw


@dataclass
class Raw:
    w13: torch.Tensor  # uint8 [E, 2N, H/2]; GPT-OSS rows interleaved (g0, u0, ...), quark [gate ; up]
    s13: torch.Tensor
    w2: torch.Tensor
    s2: torch.Tensor
    b13: torch.Tensor | None  # bf16 [E, 2N] (GPT-OSS)
    b2: torch.Tensor | None


def triton_kernels(raw: Raw, topk: int, allow_jit: bool = False) -> tuple[Prepare, Run]:
    from sglang.srt.layers.moe.fused_moe_triton.triton_kernels_moe import triton_kernel_fused_experts_with_bias
    from sglang.srt.layers.moe.topk import routing
    from sglang.srt.layers.quantization.mxfp4 import _swizzle_mxfp4
    from triton_kernels.matmul_ogs import FlexCtx, PrecisionConfig

    w13, flex13, sc13 = _swizzle_mxfp4(raw.w13, raw.s13, 8)
    w2, flex2, sc2 = _swizzle_mxfp4(raw.w2, raw.s2, 8)
    pc13 = PrecisionConfig(weight_scale=sc13, flex_ctx=FlexCtx(rhs_data=flex13))
    pc2 = PrecisionConfig(weight_scale=sc2, flex_ctx=FlexCtx(rhs_data=flex2))
    b13, b2 = raw.b13.float(), raw.b2.float()

    def prepare(ids, tw, logits):  # their routing (top-k + expert sort) replaces SGLang's select_experts
        return routing(logits, topk, sm_first=False)

    def run(x, state):
        rd, gi, si = state
        return triton_kernel_fused_experts_with_bias(x, w1=w13, w1_pcg=pc13, b1=b13, w2=w2, w2_pcg=pc2, b2=b2,
                                                     routing_data=rd, gather_indx=gi, scatter_indx=si,
                                                     gemm1_alpha=1.702, gemm1_clamp_limit=7.0)  # fmt: skip

    return prepare, run


@contextlib.contextmanager
def _no_jit(allow: bool):
    """FLASHINFER_DISABLE_JIT while loading: a missing prebuilt module fails fast instead of compiling CUTLASS
    for many minutes (the bench must stay short); `--allow-jit` lifts it."""
    old = os.environ.get("FLASHINFER_DISABLE_JIT")
    if not allow:
        os.environ["FLASHINFER_DISABLE_JIT"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("FLASHINFER_DISABLE_JIT", None)
        else:
            os.environ["FLASHINFER_DISABLE_JIT"] = old


def flashinfer(raw: Raw, topk: int, allow_jit: bool = False) -> tuple[Prepare, Run]:
    from flashinfer.fused_moe import cutlass_fused_moe
    from flashinfer.fused_moe.core import ActivationType
    from sglang.srt.layers.quantization.mxfp4 import Mxfp4MoEMethod

    e, n2, h = raw.w13.shape[0], raw.w13.shape[1], raw.w13.shape[2] * 2
    pad = lambda v: (v + 127) // 128 * 128
    layer = torch.nn.Module()
    for name, t in (("w13_weight", raw.w13), ("w13_weight_scale", raw.s13), ("w13_weight_bias", raw.b13),
                    ("w2_weight", raw.w2), ("w2_weight_scale", raw.s2), ("w2_weight_bias", raw.b2)):  # fmt: skip
        layer.register_parameter(name, torch.nn.Parameter(t.clone(), requires_grad=False))
    layer.num_local_experts = e
    layer.moe_runner_config = SimpleNamespace(gate_up_interleaved=True, gemm1_alpha=1.702, gemm1_clamp_limit=7.0)
    method = SimpleNamespace(_padded_intermediate=pad(n2 // 2), _padded_hidden=pad(h))
    with _no_jit(allow_jit):  # the interleave helpers may be JIT modules too
        Mxfp4MoEMethod._process_weights_for_sm90_cutlass(method, layer)
    scales = [layer.w13_weight_scale.view(torch.int32), layer.w2_weight_scale.view(torch.int32)]
    ids0 = torch.arange(topk, device=raw.w13.device, dtype=torch.int32)[None]
    x0 = torch.zeros(1, h, dtype=torch.bfloat16, device=raw.w13.device)

    def run(x, state):
        ids, tw = state
        xp = torch.nn.functional.pad(x, (0, method._padded_hidden - h))
        out = torch.empty(x.shape[0], method._padded_hidden, dtype=torch.bfloat16, device=x.device)
        cutlass_fused_moe(input=xp, token_selected_experts=ids.int(), token_final_scales=tw,
                          fc1_expert_weights=layer.w13_weight, fc2_expert_weights=layer.w2_weight,
                          output_dtype=torch.bfloat16, quant_scales=scales, fc1_expert_biases=layer.w13_weight_bias,
                          fc2_expert_biases=layer.w2_weight_bias, swiglu_alpha=layer.swiglu_alpha,
                          swiglu_beta=layer.swiglu_beta, swiglu_limit=layer.swiglu_limit, tp_size=1, tp_rank=0,
                          ep_size=1, ep_rank=0, use_w4_group_scaling=True, activation_type=ActivationType.Swiglu,
                          tune_max_num_tokens=max(16, 1 << (x.shape[0] - 1).bit_length()), output=out)  # fmt: skip
        return out[:, :h]

    with _no_jit(allow_jit):  # first call loads the cutlass MoE module: prebuilt, or JIT only when allowed
        run(x0, (ids0, torch.full((1, topk), 1.0 / topk, device=x0.device)))
    return _ids_weights, run


def _default_config(m: int, e: int) -> dict:
    """SGLang's `get_default_config` for bf16 (no tuned JSON for these shapes)."""
    if m <= e:
        return {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 64, "GROUP_SIZE_M": 1}
    return {"BLOCK_SIZE_M": 64, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 32, "GROUP_SIZE_M": 8}


def dequant_fused_moe(raw: Raw, topk: int, allow_jit: bool = False) -> tuple[Prepare, Run]:
    import triton.language as tl
    from sglang.kernels.ops.moe.fused_moe_triton_kernels import invoke_fused_moe_kernel
    from sglang.srt.layers.moe.moe_runner.triton_utils.moe_align_block_size import moe_align_block_size

    w13 = dequant_mxfp4(raw.w13, raw.s13, torch.bfloat16)  # [E, 2N, H], rows [gate ; up]
    w2 = dequant_mxfp4(raw.w2, raw.s2, torch.bfloat16)
    e, n2, _ = w13.shape
    flags = dict(compute_type=tl.bfloat16, use_fp8_w8a8=False, use_int8_w8a8=False, use_int8_w8a16=False,
                 use_int4_w4a16=False, per_channel_quant=False)  # fmt: skip

    def run(x, state):
        ids, tw = state
        m = x.shape[0]
        cfg = _default_config(m, e)
        sorted_ids, expert_ids, npad = moe_align_block_size(ids, cfg["BLOCK_SIZE_M"], e)
        c1 = torch.empty(m * topk, n2, dtype=torch.bfloat16, device=x.device)
        invoke_fused_moe_kernel(x, w13, None, c1, None, None, None, tw, ids, sorted_ids, expert_ids, npad, False,
                                topk, cfg, **flags)  # fmt: skip
        g, u = c1.chunk(2, dim=-1)
        h = torch.nn.functional.silu(g) * u
        c3 = torch.empty(m, topk, w2.shape[1], dtype=torch.bfloat16, device=x.device)
        invoke_fused_moe_kernel(h, w2, None, c3, None, None, None, tw, ids, sorted_ids, expert_ids, npad, True, 1,
                                cfg, **flags)  # fmt: skip
        return c3.sum(dim=1)

    return _ids_weights, run


BUILDERS = {"triton_kernels": triton_kernels, "flashinfer": flashinfer, "dequant_fused_moe": dequant_fused_moe}
