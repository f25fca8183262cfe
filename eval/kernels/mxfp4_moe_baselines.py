"""Bench baselines, set up the way SGLang 0.5.17 sets them up (GPU only; each builder may raise).

Every builder takes SGLang-layout raw experts (`Raw`: what the loader leaves before
process_weights_after_loading) and returns (prepare, run): `prepare(topk_ids, topk_weights, logits)` is untimed
routing state, `run(x, state) -> out` is what the bench times. A run may write its output into `x` (stock's
in-place MoE does): the bench hands it copies. The bench builds one baseline per weight copy (eval/kernels/timer).
- triton_kernels: `_swizzle_mxfp4` + `triton_kernel_fused_experts_with_bias` (matmul_ogs), GPT-OSS Hopper default.
- flashinfer: `Mxfp4MoEMethod._process_weights_for_sm90_cutlass` + `cutlass_fused_moe(use_w4_group_scaling)`.
- fp8_fused_moe: what stock SGLang 0.5.17 serves DeepSeek-R1's FP8 checkpoint with on sm90 (see `fp8_fused_moe`).
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

from speedrun.eval.kernels.stock import fp8_block_quant, stock_config
from speedrun.overlays.mx.format import dequant_mxfp4
from speedrun.overlays.mxfp4_moe import stock_fp8

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


FP8_BLOCK = stock_fp8.FP8_BLOCK
ROUTED_SCALING = 2.5  # DeepSeek-R1 routed_scaling_factor: the fused shared expert's top-k weight is 1 / this


def fp8_experts(w: torch.Tensor, s: torch.Tensor, chunk: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """MXFP4 experts -> DeepSeek's FP8 checkpoint format (e4m3 [E, rows, cols], fp32 scale_inv per 128x128 block),
    carrying the same values exactly (power-of-two block scales); `chunk` experts at a time bound the temporaries."""
    parts = [fp8_block_quant(dequant_mxfp4(w[i : i + chunk], s[i : i + chunk], torch.bfloat16))
             for i in range(0, w.shape[0], chunk)]  # fmt: skip
    return torch.cat([q for q, _ in parts]), torch.cat([sc for _, sc in parts])


def fp8_stock_config(e: int, h: int, n: int, topk: int, m: int) -> dict[str, Any]:
    """The fused-MoE config stock picks for this shape on this device, and where it came from."""
    from sglang.srt.layers.moe.moe_runner.triton_utils.fused_moe_triton_config import (
        get_config_file_name,
        get_moe_configs,
        try_get_optimal_moe_config,
    )

    stock_config()
    cfg, (down, _) = try_get_optimal_moe_config((e, 2 * n, h), (e, h, n), topk, "fp8_w8a8", m, block_shape=FP8_BLOCK,
                                                return_down_config=True)  # fmt: skip
    tuned = get_moe_configs(e, n, "fp8_w8a8", *FP8_BLOCK) is not None
    name = get_config_file_name(e, n, "fp8_w8a8", FP8_BLOCK)
    return {"config": cfg, "down_config": down, "source": f"tuned {name}" if tuned else f"default (no {name})"}


def fp8_fused_moe(raw: Raw, topk: int, allow_jit: bool = False) -> tuple[Prepare, Run]:
    """Stock DeepSeek-R1 FP8 MoE on sm90, as sglang 0.5.17 calls it (overlays/mxfp4_moe/stock_fp8.py
    `fused_experts` says how; the serving route for large M makes the same call): the checkpoint's FP8 experts
    here, converted once at set-up. FusedMoE's MoeRunnerConfig as DeepSeek keeps it: inplace=True, num_experts ==
    num_local_experts (no expert filtering). routed_scaling_factor is 1.0 here (stock's 2.5 is the same multiply in
    the same kernel) so the output compares with ours."""
    stock_config()
    w13, s13 = fp8_experts(raw.w13, raw.s13)  # [E, 2N, H], rows [gate ; up] as SGLang's w13
    w2, s2 = fp8_experts(raw.w2, raw.s2)
    e, n2, h = w13.shape
    cfg = stock_fp8.runner_config(e, h, n2 // 2, topk, inplace=True)

    def prepare(ids, tw, logits):
        return ids, tw

    def run(x, state):
        return stock_fp8.fused_experts(x, w13, s13, w2, s2, *state, cfg)

    return prepare, run


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


BUILDERS = {"triton_kernels": triton_kernels, "flashinfer": flashinfer, "fp8_fused_moe": fp8_fused_moe,
            "dequant_fused_moe": dequant_fused_moe}  # fmt: skip
