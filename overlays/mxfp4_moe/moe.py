"""Host side of the MXFP4 MoE: weight bundle, config choice by tokens per expert, kernel launches.

`fused_moe_mxfp4` is CUDA-graph safe: no host sync, every buffer sized from M; the only data-dependent
quantities (expert runs, padded length) stay on the device.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
import triton

from speedrun.overlays.arch import current_arch, launch_options, load_configs, sm_count
from speedrun.overlays.buffers import splitk_counters
from speedrun.overlays.mxfp4_moe.gemm import (
    ACT_SILU,
    ACT_SWIGLU_OAI,
    moe_gemm1_kernel,
    moe_gemm2_kernel,
    quant_rows_kernel,
)
from speedrun.overlays.mxfp4_moe.sort import sort_tokens

OP = "mxfp4_moe"
TPE_BUCKETS = (1, 4, 16, 64, 256)  # config keys "<fmt>:tpe<=B" and "<fmt>:tpe>256"


@dataclass
class MoeWeights:
    """Experts in our layout: w13 rows [gate (N) ; up (N)]; packed E2M1 along K + E8M0 per 32."""

    w13: torch.Tensor  # uint8 [E, 2N, H/2]
    w13_scale: torch.Tensor  # uint8 [E, 2N, H/32]
    w2: torch.Tensor  # uint8 [E, H, N/2]
    w2_scale: torch.Tensor  # uint8 [E, H, N/32]
    b13: torch.Tensor | None = None  # fp32 [E, 2N]
    b2: torch.Tensor | None = None  # fp32 [E, H]
    a4: bool = False  # w4a4: activations dynamically quantized to MXFP4
    act: int = ACT_SILU
    alpha: float = 1.702
    limit: float = 7.0

    @property
    def fmt(self) -> str:
        return "w4a4" if self.a4 else "w4a16"

    @property
    def num_experts(self) -> int:
        return self.w13.shape[0]

    @property
    def inter(self) -> int:
        return self.w13.shape[1] // 2

    @property
    def hidden(self) -> int:
        return self.w2.shape[1]


def bucket_key(fmt: str, num_tokens: int, topk: int, num_experts: int) -> str:
    tpe = num_tokens * topk / max(num_experts, 1)
    for b in TPE_BUCKETS:
        if tpe <= b:
            return f"{fmt}:tpe<={b}"
    return f"{fmt}:tpe>{TPE_BUCKETS[-1]}"


@functools.cache
def _arch() -> str:
    return current_arch()


def pick_config(w: MoeWeights, num_tokens: int, topk: int, arch: str | None = None) -> dict[str, Any]:
    arch = arch or _arch()
    return load_configs(OP, arch)[bucket_key(w.fmt, num_tokens, topk, w.num_experts)]


def _opts(cfg: dict[str, Any], which: str, arch: str) -> dict[str, Any]:
    knobs = {k: v for k, v in cfg.items() if k in ("waves_per_eu", "matrix_instr_nonkdim", "kpack")}
    knobs.update(num_warps=cfg[f"warps{which}"], num_stages=cfg[f"stages{which}"])
    return launch_options(knobs, arch)


def sm90_flags(cfg: dict[str, Any], dot_scaled: bool, device: torch.device) -> dict[str, Any]:
    """SWAP / W_DEQ / W_ASM from the config keys "swap" and "deq" (dequant path only; PTX only on CUDA)."""
    if dot_scaled:
        return {}
    deq = int(cfg.get("deq", 0))
    asm = deq > 0 and device.type == "cuda" and torch.version.hip is None
    return {"SWAP": bool(cfg.get("swap", False)), "W_DEQ": deq, "W_ASM": asm}


def gemm1_split(cfg: dict[str, Any], max_ctas: int, k_tiles: int, device: torch.device) -> int:
    """GEMM1 split-K: config "split1" (0 = auto: ~2 CTAs per SM when the active experts x N tiles, an upper bound
    known from M alone, fill less than one wave; >= 4 K tiles per split). Host-only arithmetic: graph safe."""
    want = int(cfg.get("split1", 1))
    if want == 0:
        sms = sm_count(device)
        want = 1 if max_ctas >= sms else min(-(-2 * sms // max_ctas), k_tiles // 4)
    return max(1, min(want, k_tiles, 8))


def quant_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """bf16 [M, K] -> MXFP4 (packed [M, K/2], E8M0 [M, K/32]) with the kernels' quantizer."""
    m, k = x.shape
    q = torch.empty(m, k // 2, dtype=torch.uint8, device=x.device)
    s = torch.empty(m, k // 32, dtype=torch.uint8, device=x.device)
    br, bk = 4, 256
    quant_rows_kernel[(triton.cdiv(m, br), triton.cdiv(k, bk))](x, q, s, m, k, x.stride(0), q.stride(0),
                                                                s.stride(0), BLOCK_R=br, BLOCK_K=bk)  # fmt: skip
    return q, s


def fused_moe_mxfp4(
    x: torch.Tensor,
    w: MoeWeights,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    routed_scaling_factor: float = 1.0,
    cfg: dict[str, Any] | None = None,
    arch: str | None = None,
) -> torch.Tensor:
    """x [M, H] bf16, topk_ids/topk_weights [M, topk] -> [M, H] bf16 (ids outside [0, E) are skipped).
    Weights may be padded along hidden (rows of w2, K of w13): only the first H are used."""
    arch = arch or _arch()
    m, topk = topk_ids.shape
    cfg = cfg or pick_config(w, m, topk, arch)
    dot_scaled = bool(cfg.get("dot_scaled", False))  # sm90: Triton upcasts e2m1 in registers (LUT) for us
    num, n, h = m * topk, w.inter, x.shape[1]  # weights may carry hidden padding (aiter layouts)
    s = sort_tokens(topk_ids, w.num_experts, cfg["BLOCK_M"])
    topk_weights = topk_weights.contiguous()
    dev = x.device
    flags = sm90_flags(cfg, dot_scaled, dev)
    if w.a4:
        a, a_s = quant_rows(x)
        inter = torch.empty(num, n // 2, dtype=torch.uint8, device=dev)
        inter_s = torch.empty(num, n // 32, dtype=torch.uint8, device=dev)
    else:
        a, a_s = x, x  # a_s unused for bf16 activations
        inter = torch.empty(num, n, dtype=torch.bfloat16, device=dev)
        inter_s = inter
    b13 = w.b13 if w.b13 is not None else w.w13_scale
    n_tiles = triton.cdiv(n, cfg["BLOCK_N1"])
    split = gemm1_split(cfg, min(w.num_experts, num) * n_tiles, triton.cdiv(h, cfg["BLOCK_K1"]), dev)
    part = torch.empty(s.max_blocks * n_tiles * split * 2 * cfg["BLOCK_M"] * cfg["BLOCK_N1"] if split > 1 else 1,
                       dtype=torch.float32, device=dev)  # fmt: skip
    cnt = splitk_counters(dev, s.max_blocks * n_tiles) if split > 1 else s.num_padded
    grid1 = (s.max_blocks, n_tiles, split)
    moe_gemm1_kernel[grid1](
        a, a_s, w.w13, w.w13_scale, b13, inter, inter_s, s.sorted_ids, s.expert_ids, s.num_padded,
        num, n, h, a.stride(0), a_s.stride(0), w.w13.stride(0), w.w13.stride(1), w.w13_scale.stride(0),
        w.w13_scale.stride(1), b13.stride(0), inter.stride(0), inter_s.stride(0), float(w.alpha), float(w.limit),
        TOPK=topk, A_FP4=w.a4, OUT_FP4=w.a4, ACT=w.act, HAS_BIAS=w.b13 is not None, DOT_SCALED=dot_scaled,
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N1"], BLOCK_K=cfg["BLOCK_K1"], **_opts(cfg, "1", arch), **flags,
        part_ptr=part, cnt_ptr=cnt, SPLIT_K=split,
    )  # fmt: skip
    out = torch.zeros(m, h, dtype=torch.float32, device=dev)
    b2 = w.b2 if w.b2 is not None else w.w2_scale
    grid2 = (s.max_blocks, triton.cdiv(h, cfg["BLOCK_N2"]))
    moe_gemm2_kernel[grid2](
        inter, inter_s, w.w2, w.w2_scale, b2, topk_weights, out, s.sorted_ids, s.expert_ids, s.num_padded,
        num, h, n, inter.stride(0), inter_s.stride(0), w.w2.stride(0), w.w2.stride(1), w.w2_scale.stride(0),
        w.w2_scale.stride(1), b2.stride(0), out.stride(0),
        TOPK=topk, A_FP4=w.a4, HAS_BIAS=w.b2 is not None, DOT_SCALED=dot_scaled,
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N2"], BLOCK_K=cfg["BLOCK_K2"], **_opts(cfg, "2", arch), **flags,
    )  # fmt: skip
    if routed_scaling_factor != 1.0:
        out.mul_(routed_scaling_factor)
    return out.to(torch.bfloat16)


__all__ = ["ACT_SILU", "ACT_SWIGLU_OAI", "MoeWeights", "bucket_key", "fused_moe_mxfp4", "pick_config", "quant_rows"]
