"""Pure-torch (float32) absorbed-MLA decode: the numerics our kernel must match.

o[b, h] = softmax(sm_scale * k_scale * q[b, h] . K_b^T) @ (v_scale * V_b), with K_b the 576-wide latent
rows of sequence b (gathered through kv_indices[kv_indptr[b]:kv_indptr[b+1]]) and V_b their first 512.
Host-side loop over the batch: for tests and the `reference` backend (eager only, not CUDA-graph safe).
`mla_decode_a8w8_reference` is the same with the a8w8 kernel's numerics (fp8 q, fp8 or f16 P);
`mla_decode_mxfp4_reference` on an MXFP4 cache's exact values.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from speedrun.overlays.mla_decode.kernels import D_LATENT, D_QK, P_SCALE
from speedrun.overlays.mx.format import e8m0_to_float, unpack_e2m1
from speedrun.overlays.mx.quant import quant_mxfp4

LOG2E = 1.4426950408889634


def token_rows(kv: torch.Tensor, page_size: int = 1) -> torch.Tensor:
    """The KV pool as [slots, 576] rows addressed by token slot (3-D [N, 1, 576] or 4-D [pages, ps, 1, 576])."""
    if kv.dim() == 4:
        assert kv.shape[1] == page_size, f"4-D KV pool must have page_size={page_size} at dim 1"
    return kv.reshape(-1, kv.shape[-1])


def mla_decode_reference(
    q: torch.Tensor,
    kv: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    sm_scale: float,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
    page_size: int = 1,
) -> torch.Tensor:
    """q [bs, H, 576]; kv pool (bf16 or fp8); returns o [bs, H, 512] in float32."""
    bs, heads, dim = q.shape
    assert dim == D_QK, f"q head dim {dim} != {D_QK}"
    rows = token_rows(kv, page_size)
    indptr = kv_indptr.tolist()
    out = torch.zeros(bs, heads, D_LATENT, dtype=torch.float32, device=q.device)
    for b in range(bs):
        idx = kv_indices[indptr[b] : indptr[b + 1]].long()
        if idx.numel() == 0:
            continue
        k = rows[idx].float()  # [n, 576]
        scores = (q[b].float() @ (k * k_scale).T) * sm_scale  # [H, n]
        out[b] = torch.softmax(scores, dim=-1) @ (k[:, :D_LATENT] * v_scale)
    return out


def quantize_kv_mxfp4(kv: torch.Tensor, block: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """A latent pool [..., 576] as an E2M1 cache: (codes float4_e2m1fn_x2 [..., 288], E8M0 scales uint8
    [..., 576 / block]), one scale per `block` columns (32 or 16), mx.quant's rule (the block's max |x| lands in
    E2M1's top binade; a 16-column block is quantized as a 32-column one padded with zeros)."""
    if block == 32:
        codes, scales = quant_mxfp4(kv)
        return codes.view(torch.float4_e2m1fn_x2), scales
    blocks = kv.unflatten(-1, (D_QK // block, block))
    codes, scales = quant_mxfp4(torch.nn.functional.pad(blocks, (0, 32 - block)))
    return codes[..., : block // 2].flatten(-2).contiguous().view(torch.float4_e2m1fn_x2), scales[..., 0]


def mla_decode_mxfp4_reference(q: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, kv_indptr: torch.Tensor,
                               kv_indices: torch.Tensor, sm_scale: float) -> torch.Tensor:  # fmt: skip
    """mla_decode_reference on the exact values of an E2M1 cache: codes [slots, 1, 288], scales [slots, 576 / B],
    one scale per B columns (32: MXFP4; 16: SGLang's fp4_mx_block16 pool)."""
    vals = unpack_e2m1(codes.view(torch.uint8).reshape(-1, D_QK // 2))
    scales = scales.view(torch.uint8).reshape(vals.shape[0], -1)
    kv = vals * e8m0_to_float(scales).repeat_interleave(D_QK // scales.shape[1], dim=-1)
    return mla_decode_reference(q, kv[:, None, :], kv_indptr, kv_indices, sm_scale)


def q_exp(fp8: torch.dtype) -> int:
    return math.floor(math.log2(torch.finfo(fp8).max))


def quantize_q(q: torch.Tensor, fp8: torch.dtype, scale: Literal["row", "tensor"] = "row") -> tuple:
    """q [bs, H, 576] -> (fp8 codes, multiplier [bs, H, 1]): q ~= codes / multiplier.
    "row" is the kernel's: per (sequence, head), a power of two that puts the row's max|q| in
    [2^(e-1), 2^e) with 2^e <= the format's max (the multiplier's exponent is read off amax's float bits, as the
    kernel does, so the codes are the same bit for bit). "tensor" is SGLang's scaled_fp8_quant / aiter's a8w8
    (one dynamic scale, max|q| -> the format's max), for comparing accuracies."""
    qf = q.float()
    fmax = torch.finfo(fp8).max
    if scale == "tensor":
        amax = qf.abs().amax().clamp_min(torch.finfo(torch.float32).tiny)
        mul = (fmax / amax).expand(*q.shape[:2], 1)
        return (qf * mul).clamp(-fmax, fmax).to(fp8), mul
    amax = qf.abs().amax(dim=-1, keepdim=True)
    e = ((amax.view(torch.int32) >> 23) & 0xFF) - 127
    k = (q_exp(fp8) - 1 - e).clamp(-126, 127)
    mul = ((k + 127) << 23).view(torch.float32)
    return (qf * mul).to(fp8), mul


def quantize_p(p: torch.Tensor, fp8: torch.dtype, pv: Literal["fp8", "f16"]) -> torch.Tensor:
    """P in [0, 1] as the kernel feeds it to PV: scaled by P_SCALE (a power of two), cast, scaled back."""
    scale = float(P_SCALE.value)
    return (p * scale).to(fp8 if pv == "fp8" else torch.float16).float() / scale


def _a8w8_rows(q, kv, kv_indptr, kv_indices, sm_scale, k_scale, page_size, q_scale):
    """Per non-empty sequence b: (b, its latent rows [n, 576] exactly dequantized, P = exp2(s - ceil(max s)) [H, n]
    from the fp8 q codes, fp32 scores in the log2 domain)."""
    assert kv.dtype.itemsize == 1, f"a8w8 needs an fp8 KV cache, got {kv.dtype}"
    assert q.shape[-1] == D_QK, f"q head dim {q.shape[-1]} != {D_QK}"
    rows = token_rows(kv, page_size)
    codes, mul = quantize_q(q, kv.dtype, q_scale)
    indptr = kv_indptr.tolist()
    for b in range(q.shape[0]):
        idx = kv_indices[indptr[b] : indptr[b + 1]].long()
        if idx.numel() == 0:
            continue
        k = rows[idx].float()  # [n, 576], exact
        s2 = (codes[b].float() @ k.T) / mul[b] * (sm_scale * k_scale * LOG2E)  # [H, n], log2 domain
        yield b, k, torch.exp2(s2 - s2.amax(dim=-1, keepdim=True).ceil())


def mla_decode_a8w8_reference(
    q: torch.Tensor,
    kv: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    sm_scale: float,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
    page_size: int = 1,
    pv: Literal["fp8", "f16"] = "fp8",
    q_scale: Literal["row", "tensor"] = "row",
) -> torch.Tensor:
    """The a8w8 kernel's semantics in float32: q quantized to the cache's fp8 format (quantize_q), the fp8 KV
    dequantized exactly (k_scale folded into the scores, v_scale into the output), fp32 scores and softmax, P
    quantized as the kernel feeds PV (quantize_p). The kernel's online softmax keeps its running max an integer
    (log2 domain), so its P differs from exp2(s - ceil(max s)) by exact powers of two, which fp8 rounding
    commutes with: the same codes whatever the kernel's tiling and split (bar subnormals, which only P < 2^-14
    of the row's largest reaches, and fp32 rounding ties). What it cannot model is the GPU's own QK sum (order,
    and the fp8 MMA's accumulation precision): a P element that lies near an e4m3 rounding midpoint may round
    the other way there (`a8w8_p_rounding_bound`)."""
    out = torch.zeros(q.shape[0], q.shape[1], D_LATENT, dtype=torch.float32, device=q.device)
    for b, k, p in _a8w8_rows(q, kv, kv_indptr, kv_indices, sm_scale, k_scale, page_size, q_scale):
        out[b] = (quantize_p(p, kv.dtype, pv) @ k[:, :D_LATENT]) / p.sum(dim=-1, keepdim=True) * v_scale
    return out


def a8w8_p_rounding_bound(
    q: torch.Tensor,
    kv: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    sm_scale: float,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
    page_size: int = 1,
    flips: int = 2,
    chunk_elems: int = 1 << 24,
) -> torch.Tensor:
    """How far fp8 P's rounding can move the a8w8 output when the kernel's scores differ from the reference's by
    a rounding error: [bs, H, 512], the sum of the `flips` largest u_j * |v_jd| / l over tokens j, with
    u_j = one e4m3 ulp of P_j (as fed to PV: 256 P_j in e4m3, 3 mantissa bits, so u_j <= P_j / 8) and
    l = sum_j P_j. Why: the kernel's P_j = P_j (1 + e_j), |e_j| = ln 2 * |score error| (tiny); the fp8 code of
    P_j only changes when P_j lies within that of a rounding midpoint, and then by exactly one ulp, so each
    such token moves output element d by u_j |v_jd| / l * v_scale <= (softmax weight of j) * |v_jd| / 8. Such
    flips are rare (probability ~ 2 e_j P_j / u_j <= 32 e_j per token) and only the heaviest tokens can push an
    element past 1e-2, so `flips` of them per row cover the case. A token dropped or counted twice moves it by
    w_j |v_jd|, and with flips=2 the bound is at most a quarter of the largest w_j |v_jd| of the element: dropping
    that token still fails. pv f16 (10 mantissa bits) needs none of this."""
    out = torch.zeros(q.shape[0], q.shape[1], D_LATENT, dtype=torch.float32, device=q.device)
    scale = float(P_SCALE.value)
    emin = math.log2(torch.finfo(kv.dtype).smallest_normal)  # e4m3fn -6, e4m3fnuz -7: subnormals below
    step = max(1, chunk_elems // (q.shape[1] * D_LATENT))  # tokens per [H, tokens, 512] block
    for b, k, p in _a8w8_rows(q, kv, kv_indptr, kv_indices, sm_scale, k_scale, page_size, "row"):
        ulp = torch.exp2(torch.floor(torch.log2(p * scale)).clamp(min=emin) - 3) / scale  # 3 mantissa bits
        weight = ulp / p.sum(dim=-1, keepdim=True) * v_scale  # [H, n]
        top = None
        for j in range(0, p.shape[1], step):
            c = weight[:, j : j + step, None] * k[None, j : j + step, :D_LATENT].abs()  # [H, tokens, 512]
            c = c if top is None else torch.cat([top, c], dim=1)
            top = c.topk(min(flips, c.shape[1]), dim=1).values
        out[b] = top.sum(dim=1)
    return out


# k values that tell the store's rules apart: past the fp8 range (NaN under torch < 2.12's cast, 448 after), the
# 448 / 464 rounding edges, below the subnormals, and inf
E4M3_EDGES = (600.0, -1e4, 3e-5, 464.0, -465.0, 456.0, -448.0, float("inf"), float("-inf"))


def e4m3fn_cast(x: torch.Tensor, saturate: bool) -> torch.Tensor:
    """x cast to float8_e4m3fn under either torch's overflow rule, whatever torch runs this: to nearest even,
    then past 448 either 448 (saturate: torch >= 2.12) or NaN with x's sign (torch < 2.12: from 464 up, and inf)."""
    x = x.float()
    y = x.clamp(-448.0, 448.0).to(torch.float8_e4m3fn)  # within +-448 both rules round alike
    if saturate:
        return y
    nan = (x.abs() > 464.0) | x.isnan()
    bits = torch.where(nan, (x.view(torch.int32) < 0).to(torch.uint8) * 0x80 | 0x7F, y.view(torch.uint8))
    return bits.view(torch.float8_e4m3fn)


def store_kv_reference(
    k: torch.Tensor, loc: torch.Tensor, cache: torch.Tensor, k_scale: torch.Tensor | None, saturate: bool | None = None
) -> None:
    """SGLang 0.5.17's decode store of an MLA cache (TritonAttnBackend.forward_decode, MLATokenToKVPool): k
    divided in place by k_scale (a 0-dim fp32 tensor on the GPU) in its own dtype, cast to the cache's dtype,
    written at loc. saturate None: this torch's cast; True / False: the e4m3fn cast of torch >= 2.12 / < 2.12."""
    k = k.reshape(k.shape[0], -1)
    if k_scale is not None:  # as torch's CUDA div with a 0-dim CUDA scale: the scale in k's dtype, an fp32 divide
        k = (k.float() / k_scale.to(k.dtype).float()).to(k.dtype)
    out = k.to(cache.dtype) if saturate is None else e4m3fn_cast(k, saturate)
    cache.view(-1, cache.shape[-1])[loc.long()] = out
