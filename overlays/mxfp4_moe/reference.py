"""Pure-torch MXFP4 MoE (backend `reference`): the maths our kernels must reproduce.

Weights use our load-time layout (`MoeWeights`): w13 rows = [gate (N) ; up (N)] per expert, packed E2M1 along
K with E8M0 scales per 32. GPT-OSS (w4a16): bf16 activations, biases, SwiGLU(alpha, limit). DeepSeek quark
(w4a4): activations and the GEMM1 output quantized to MXFP4 per 32 along K, SiLU-gated, no biases.
Mirrors SGLang's rounding points: the GEMM1 output (+bias) is rounded to bf16 before the activation, the
activation output is bf16; the per-expert GEMM2 results are summed in fp32.
`a8` (the w4a8 path, MoeBucket.a8): both GEMMs' activations quantized to e4m3 per 128-column group instead
(`qdq_fp8_groups`: scale amax / 448, as SGLang's per-token-group FP8 quantizer), the weights exact.
"""

from __future__ import annotations

import torch

from speedrun.overlays.mx.format import dequant_mxfp4
from speedrun.overlays.mx.quant import qdq_mxfp4
from speedrun.overlays.mxfp4_moe.config import Act

FP8_MAX = 448.0
FP8_GROUP = 128


def qdq_fp8_groups(x: torch.Tensor) -> torch.Tensor:
    """[.., K] -> fp32 dequant(quant(x)) with one e4m3 scale (amax / 448, floored at 1e-10) per 128 columns."""
    g = x.float().unflatten(-1, (-1, FP8_GROUP))
    scale = g.abs().amax(-1, keepdim=True).clamp_min(1e-10) / FP8_MAX
    return ((g / scale).to(torch.float8_e4m3fn).float() * scale).flatten(-2)


def activation(h: torch.Tensor, act: int, alpha: float, limit: float) -> torch.Tensor:
    """[.., 2N] fp32 (gate | up) -> bf16 [.., N]."""
    g, u = h.chunk(2, dim=-1)
    if act == Act.SWIGLU_OAI:
        g = g.clamp(max=limit)
        u = u.clamp(-limit, limit)
        out = g * torch.sigmoid(alpha * g) * (u + 1)
    else:
        out = torch.nn.functional.silu(g) * u
    return out.to(torch.bfloat16)


def moe_reference(
    x: torch.Tensor,
    w13: torch.Tensor,
    w13_scale: torch.Tensor,
    w2: torch.Tensor,
    w2_scale: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    *,
    b13: torch.Tensor | None = None,
    b2: torch.Tensor | None = None,
    a4: bool = False,
    a8: bool = False,
    act: int = Act.SILU,
    alpha: float = 1.702,
    limit: float = 7.0,
    routed_scaling_factor: float = 1.0,
) -> torch.Tensor:
    """x [M, K] bf16 -> [M, K] bf16. Expert ids outside [0, E) contribute nothing (EP-filtered slots)."""
    num_experts = w13.shape[0]
    xa = qdq_fp8_groups(x) if a8 else qdq_mxfp4(x, torch.float32) if a4 else x.float()
    out = torch.zeros(x.shape[0], w2.shape[1], dtype=torch.float32, device=x.device)
    for e in range(num_experts):
        tok, slot = (topk_ids == e).nonzero(as_tuple=True)
        if tok.numel() == 0:
            continue
        h = xa[tok] @ dequant_mxfp4(w13[e], w13_scale[e]).T
        if b13 is not None:
            h = h + b13[e].float()
        h = activation(h.to(torch.bfloat16).float(), act, alpha, limit)
        h = qdq_fp8_groups(h) if a8 else qdq_mxfp4(h, torch.float32) if a4 else h.float()
        y = h @ dequant_mxfp4(w2[e], w2_scale[e]).T
        if b2 is not None:
            y = y + b2[e].float()
        out.index_add_(0, tok, y * topk_weights[tok, slot].float().unsqueeze(-1))
    return (out * routed_scaling_factor).to(torch.bfloat16)
