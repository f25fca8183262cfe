"""Routing-aware grouped GEMMs for MXFP4 experts (one CTA = BLOCK_M sorted slots of one expert x BLOCK_N).

GEMM1: gathers token rows (slot // TOPK) of x, multiplies by the expert's [gate ; up] rows, adds biases and
applies SwiGLU-OAI or SiLU-gate in the epilogue; writes bf16 or (w4a4) MXFP4 rows indexed by slot.
GEMM2: reads those slot rows, multiplies by w2, adds the bias, scales by the routing weight and stores one fp32 row
per slot (bf16 with the bucket's y_bf16); combine_kernel sums each token's rows in fp32 (fixed order:
deterministic), scales and casts to bf16.

Operands: weights always MXFP4 [E, rows, K/2] + [E, rows, K/32]; activations bf16 (w4a16) or MXFP4 (w4a4).
w4a4 with the bucket's a_qdq: x and GEMM1's output are quantized and dequantized once per row (OUT_QDQ) and reach
the GEMMs as bf16 on the MXFP4 grid, the same values the A_FP4 path decodes in every CTA that reads them.
DOT_SCALED=False dequantizes both to bf16 in registers and uses tl.dot (sm90, and the CPU interpreter);
DOT_SCALED=True hands the packed operands to tl.dot_scaled (gfx950: v_mfma_scale for e2m1 x e2m1).
sm90 knobs: SWAP computes acc^T = W @ A^T (weights on the MMA's M side, from registers; tokens on its narrow N
side); W_DEQ=2 uses the fast even/odd-K decode (mx.mxfp4_halves_bf16, inline PTX when W_ASM).
W_SWZ: the weights are in mx.layout's swz128 layout (int32 words, K padded to 128, scales padded alike): each
thread loads its MMA fragment's codes as 16-byte vectors and decodes them in place (mx.mxfp4_swz_words_bf16);
W_ROWG > 1: those swz128 rows stored in groups of W_ROWG (mx.layout `group_rows`: one K step of a tile reads
W_ROWG x 64 contiguous bytes per group instead of 64 bytes per row).
W_MUL1: one bf16x2 multiply per decoded pair (valid when every weight scale byte is <= 128, checked at load).
B_REGS (CUDA): the bf16 activation tile goes through registers in the K loop (an identity PTX mov) so the swapped
dot's wgmmas are not serialized (Triton's "properly async" dot threads a wait after each; PERF.md Round 5).
A8 (w4a8, the bucket's a8): activations in e4m3 with an fp32 scale per (row, 128 columns), weights decoded to
e4m3 in the K loop (_mma_fp8) and FP8 MMAs, unswapped (prefill sizes); GEMM1's epilogue writes h the same way.
Routing sort (sort.py launches them): rank / offsets / scatter phases, one kernel each or all in one CTA.
PDL (the bucket's pdl, sm90): the decode chain sort -> quant -> GEMM1 -> GEMM2 -> combine launches as programmatic
dependents (overlays/pdl.py's rules): the quantizer runs beside the one-CTA sort, GEMM2's programs start during
GEMM1's tail and pull their weights into L2 before they wait for GEMM1's output.
The large-M route's MXFP4 -> FP8 conversion is shared with the GEMM: mx/fp8_kernel.py (stock_fp8.py launches it).
"""

from __future__ import annotations

import triton
import triton.language as tl

from speedrun.overlays.mx.triton_helpers import (
    mxfp4_halves_bf16,
    mxfp4_swz_words_bf16,
    mxfp4_to_bf16,
    mxfp4_to_bf16_fast,
    pow2_f32,
    qdq_mxfp4_bf16,
    quant_mxfp4,
    split_k_pairs,
    swz_tile_ptrs,
    swz_unit_ptrs,
    via_regs,
)
from speedrun.overlays.pdl import pdl_trigger, pdl_wait, prefetch_ptrs


@triton.jit
def _load_a(a_ptr, as_ptr, rows, m_ok, k0, K, stride_am, stride_asm,
            A_FP4: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, FULL: tl.constexpr = False,
            A_SW: tl.constexpr = False):  # fmt: skip
    """A tile at K offset k0: bf16 [BM, BK], or packed [BM, BK/2] + scales [BM, BK/32] (A twice for bf16).
    FULL: the tile lies inside K (rows masked only). A_SW (K and BK multiples of 128): the scales as one int32 per
    row and 128 codes, split into bytes in registers: a 1-byte load is never staged through cp.async, so it is a
    synchronous load in every K step (PERF.md round 7); a 4-byte one is."""
    if A_FP4:
        kb = k0 // 2 + tl.arange(0, BLOCK_K // 2)
        ks = k0 // 32 + tl.arange(0, BLOCK_K // 32)
        if FULL:
            ok_b, ok_s = m_ok[:, None], m_ok[:, None]
        else:
            ok_b, ok_s = m_ok[:, None] & (kb[None, :] < K // 2), m_ok[:, None] & (ks[None, :] < K // 32)
        a = tl.load(a_ptr + rows[:, None] * stride_am + kb[None, :], mask=ok_b, other=0)
        if A_SW:
            kw = k0 // 128 + tl.arange(0, BLOCK_K // 128)
            ok_w = m_ok[:, None] if FULL else m_ok[:, None] & (kw[None, :] < K // 128)
            words = tl.load(as_ptr.to(tl.pointer_type(tl.int32)) + rows[:, None] * (stride_asm // 4) + kw[None, :],
                            mask=ok_w, other=0x7F7F7F7F)  # fmt: skip
            shift = (tl.arange(0, 4) * 8)[None, None, :]
            a_s = ((words[:, :, None] >> shift) & 0xFF).reshape(BLOCK_M, BLOCK_K // 32).to(tl.uint8)
        else:
            a_s = tl.load(as_ptr + rows[:, None] * stride_asm + ks[None, :], mask=ok_s, other=127)
    else:
        kk = k0 + tl.arange(0, BLOCK_K)
        ok = m_ok[:, None] if FULL else m_ok[:, None] & (kk[None, :] < K)
        a = tl.load(a_ptr + rows[:, None] * stride_am + kk[None, :], mask=ok, other=0.0)
        a_s = a  # unused for bf16 activations
    return a, a_s


@triton.jit
def _load_w(w_ptr, ws_ptr, wrows, n_ok, k0, K, stride_wn, stride_wsn, BLOCK_K: tl.constexpr):
    """Weight tile: packed [BN, BK/2] + E8M0 [BN, BK/32] (masked bytes read as +0 with scale 1)."""
    kb = k0 // 2 + tl.arange(0, BLOCK_K // 2)
    ks = k0 // 32 + tl.arange(0, BLOCK_K // 32)
    w = tl.load(w_ptr + wrows[:, None] * stride_wn + kb[None, :], mask=n_ok[:, None] & (kb[None, :] < K // 2),
                other=0)  # fmt: skip
    ws = tl.load(ws_ptr + wrows[:, None] * stride_wsn + ks[None, :], mask=n_ok[:, None] & (ks[None, :] < K // 32),
                 other=127)  # fmt: skip
    return w, ws


@triton.jit
def _load_w_swz(w_ptr, ws_ptr, wrows, n_ok, k0, K, stride_wn, stride_wsn, BLOCK_K: tl.constexpr,
                FULL: tl.constexpr = False, EVEN_N: tl.constexpr = False, ROWG: tl.constexpr = 1):  # fmt: skip
    """swz128 weight tile: int32 words [BN, BK/8] (row stride in words; K padded to 128) + each word's E8M0
    scale [BN, BK/8] (4 contiguous bytes per row and lane: scale rows are padded to 16 bytes). FULL (the tile lies
    inside K) and EVEN_N (every row exists) drop the masks: ~7% of the GEMM1 loop's instructions in sm90 SASS.
    ROWG > 1: rows stored in groups of ROWG (mx.layout `group_rows`: a K step reads ROWG x 64 contiguous bytes)."""
    kp = tl.cdiv(K, 128) * 128
    kw = k0 // 8 + tl.arange(0, BLOCK_K // 8)
    wp = swz_tile_ptrs(w_ptr, wrows, k0, stride_wn, BLOCK_K, ROWG)
    sp = swz_tile_ptrs(ws_ptr, wrows, k0, stride_wsn, BLOCK_K, ROWG, SCALES=True)
    if FULL and EVEN_N:
        w = tl.load(wp)
        ws = tl.load(sp)
    else:
        if FULL:
            ok = n_ok[:, None] & (kw[None, :] >= 0)
        elif EVEN_N:
            ok = kw[None, :] < kp // 8
        else:
            ok = n_ok[:, None] & (kw[None, :] < kp // 8)
        w = tl.load(wp, mask=ok, other=0)
        ws = tl.load(sp, mask=ok, other=127)
    return w, ws


@triton.jit
def _mma_swz(acc, a, a_s, w, ws, A_FP4: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
             BLOCK_K: tl.constexpr, SWAP: tl.constexpr, W_ASM: tl.constexpr, W_MUL1: tl.constexpr):  # fmt: skip
    """acc += A @ W^T with W from swz128 words (decoded to plain k order in registers)."""
    wb = mxfp4_swz_words_bf16(w, ws, BLOCK_N, BLOCK_K, W_ASM, W_MUL1)
    if A_FP4:
        a = mxfp4_to_bf16_fast(a, a_s, BLOCK_M, BLOCK_K, W_ASM)
    if SWAP:
        acc = tl.dot(wb, tl.trans(a.to(tl.bfloat16)), acc)
    else:
        acc = tl.dot(a.to(tl.bfloat16), tl.trans(wb), acc)
    return acc


@triton.jit
def _fp8_group(x):
    """fp32 [R, 128] -> (e4m3 [R, 128], fp32 scale [R]): one scale per row, amax / 448 floored at 1e-10 (the w4a8
    path's activations: reference.qdq_fp8_groups)."""
    sc = tl.maximum(tl.max(tl.abs(x), axis=1), 1e-10) / 448.0
    return (x / sc[:, None]).to(tl.float8e4nv), sc


@triton.jit
def _load_a8(a_ptr, as_ptr, rows, m_ok, k0, K, stride_am, stride_asm, BLOCK_M: tl.constexpr,
             BLOCK_K: tl.constexpr, FULL: tl.constexpr):  # fmt: skip
    """The w4a8 path's A tile at K offset k0 (a multiple of 128): e4m3 [BM, 128] and its rows' scales [BM]."""
    a, _ = _load_a(a_ptr, as_ptr, rows, m_ok, k0, K, stride_am, stride_asm, False, BLOCK_M, BLOCK_K, FULL)
    return a, tl.load(as_ptr + rows * stride_asm + k0 // 128, mask=m_ok, other=0.0)


@triton.jit
def _mma_fp8(acc, a, a_sc, w, ws, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, W_ASM: tl.constexpr):
    """acc [BM, BN] += (A8 . W8^T) * a_sc[m] * w_sc[n] for one 128-deep K step (PERF.md "w4a8 prefill"): each
    weight row's 4 E8M0 bytes are rebased to s - s_max + 133, so the swz128 decode gives e2m1 * 2**(s - s_max + 6),
    exact in bf16 and in e4m3 for blocks within 14 binades of the row's largest (the FP8 conversion's window), and
    w_sc = 2**(s_max - 133) restores them. Rebased bytes are floored at 0 (blocks ~2**-127 of the row's largest)."""
    ws_i = ws.to(tl.int32)
    smax = tl.max(ws_i, axis=1)
    rebased = tl.maximum(ws_i - smax[:, None] + 133, 0).to(tl.uint8)
    w8 = mxfp4_swz_words_bf16(w, rebased, BLOCK_N, BLOCK_K, W_ASM).to(tl.float8e4nv)
    part = tl.dot(a, tl.trans(w8))
    w_sc = pow2_f32(tl.maximum(smax - 133, -126))
    return acc + part * (a_sc[:, None] * w_sc[None, :])


@triton.jit
def _mma(acc, a, a_s, w, ws, A_FP4: tl.constexpr, DOT_SCALED: tl.constexpr,
         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
         SWAP: tl.constexpr, W_DEQ: tl.constexpr, W_ASM: tl.constexpr):  # fmt: skip
    """acc += A @ W^T for one K step (acc is [BN, BM] = W @ A^T when SWAP)."""
    if DOT_SCALED:
        if A_FP4:
            acc = tl.dot_scaled(a, a_s, "e2m1", tl.trans(w), ws, "e2m1", acc)
        else:
            acc = tl.dot_scaled(a, None, "bf16", tl.trans(w), ws, "e2m1", acc)
    elif W_DEQ == 2:
        # Fast decode kept as even/odd-K halves (no interleave of the weight tile); A split the same way.
        w_lo, w_hi = mxfp4_halves_bf16(w, ws, BLOCK_N, BLOCK_K, W_ASM)
        if A_FP4:
            a_lo, a_hi = mxfp4_halves_bf16(a, a_s, BLOCK_M, BLOCK_K, W_ASM)
        else:
            a_lo, a_hi = split_k_pairs(a.to(tl.bfloat16), BLOCK_M, BLOCK_K)
        if SWAP:
            acc = tl.dot(w_lo, tl.trans(a_lo), acc)
            acc = tl.dot(w_hi, tl.trans(a_hi), acc)
        else:
            acc = tl.dot(a_lo, tl.trans(w_lo), acc)
            acc = tl.dot(a_hi, tl.trans(w_hi), acc)
    else:
        if A_FP4:
            a = mxfp4_to_bf16(a, a_s, BLOCK_M, BLOCK_K)
        if SWAP:
            acc = tl.dot(mxfp4_to_bf16(w, ws, BLOCK_N, BLOCK_K), tl.trans(a), acc)
        else:
            acc = tl.dot(a, tl.trans(mxfp4_to_bf16(w, ws, BLOCK_N, BLOCK_K)), acc)
    return acc


@triton.jit
def _gemm1_step(acc_g, acc_u, a_ptr, as_ptr, w_ptr, ws_ptr, rows, m_ok, offs_n, n_ok, k0, N, K, stride_am,
                stride_asm, stride_wn, stride_wsn, A_FP4: tl.constexpr, DOT_SCALED: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SWAP: tl.constexpr,
                W_DEQ: tl.constexpr, W_ASM: tl.constexpr, W_SWZ: tl.constexpr, W_MUL1: tl.constexpr,
                FULL: tl.constexpr, EVEN_N: tl.constexpr, B_REGS: tl.constexpr,
                A_SW: tl.constexpr = False, ROWG: tl.constexpr = 1, A8: tl.constexpr = False):  # fmt: skip
    """One K tile of GEMM1: gate and up accumulators (FULL: the tile lies inside K, loads unmasked along K; ROWG:
    the swz128 weights' row group, mx.layout; A8: the w4a8 path, _mma_fp8)."""
    if A8:
        a, a_sc = _load_a8(a_ptr, as_ptr, rows, m_ok, k0, K, stride_am, stride_asm, BLOCK_M, BLOCK_K, FULL)
        wg, wgs = _load_w_swz(w_ptr, ws_ptr, offs_n, n_ok, k0, K, stride_wn, stride_wsn, BLOCK_K, FULL, EVEN_N,
                              ROWG)  # fmt: skip
        wu, wus = _load_w_swz(w_ptr, ws_ptr, offs_n + N, n_ok, k0, K, stride_wn, stride_wsn, BLOCK_K, FULL, EVEN_N,
                              ROWG)  # fmt: skip
        return (_mma_fp8(acc_g, a, a_sc, wg, wgs, BLOCK_N, BLOCK_K, W_ASM),
                _mma_fp8(acc_u, a, a_sc, wu, wus, BLOCK_N, BLOCK_K, W_ASM))  # fmt: skip
    a, a_s = _load_a(a_ptr, as_ptr, rows, m_ok, k0, K, stride_am, stride_asm, A_FP4, BLOCK_M, BLOCK_K, FULL, A_SW)
    if B_REGS and not A_FP4:  # MXFP4 activations are decoded in registers already
        a = via_regs(a)
    if W_SWZ:
        wg, wgs = _load_w_swz(w_ptr, ws_ptr, offs_n, n_ok, k0, K, stride_wn, stride_wsn, BLOCK_K, FULL, EVEN_N,
                              ROWG)  # fmt: skip
        wu, wus = _load_w_swz(w_ptr, ws_ptr, offs_n + N, n_ok, k0, K, stride_wn, stride_wsn, BLOCK_K, FULL, EVEN_N,
                              ROWG)  # fmt: skip
        acc_g = _mma_swz(acc_g, a, a_s, wg, wgs, A_FP4, BLOCK_M, BLOCK_N, BLOCK_K, SWAP, W_ASM, W_MUL1)
        acc_u = _mma_swz(acc_u, a, a_s, wu, wus, A_FP4, BLOCK_M, BLOCK_N, BLOCK_K, SWAP, W_ASM, W_MUL1)
    else:
        wg, wgs = _load_w(w_ptr, ws_ptr, offs_n, n_ok, k0, K, stride_wn, stride_wsn, BLOCK_K)
        wu, wus = _load_w(w_ptr, ws_ptr, offs_n + N, n_ok, k0, K, stride_wn, stride_wsn, BLOCK_K)
        acc_g = _mma(acc_g, a, a_s, wg, wgs, A_FP4, DOT_SCALED, BLOCK_M, BLOCK_N, BLOCK_K, SWAP, W_DEQ, W_ASM)
        acc_u = _mma(acc_u, a, a_s, wu, wus, A_FP4, DOT_SCALED, BLOCK_M, BLOCK_N, BLOCK_K, SWAP, W_DEQ, W_ASM)
    return acc_g, acc_u


@triton.jit
def _gemm2_step(acc, a_ptr, as_ptr, w_ptr, ws_ptr, slot, m_ok, offs_n, n_ok, k0, K, stride_am, stride_asm,
                stride_wn, stride_wsn, A_FP4: tl.constexpr, DOT_SCALED: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SWAP: tl.constexpr, W_DEQ: tl.constexpr,
                W_ASM: tl.constexpr, W_SWZ: tl.constexpr, W_MUL1: tl.constexpr, FULL: tl.constexpr,
                EVEN_N: tl.constexpr, B_REGS: tl.constexpr, A_SW: tl.constexpr = False,
                ROWG: tl.constexpr = 1, A8: tl.constexpr = False):  # fmt: skip
    """One K tile of GEMM2 (FULL, B_REGS, A_SW, ROWG, A8 as in _gemm1_step)."""
    if A8:
        a, a_sc = _load_a8(a_ptr, as_ptr, slot, m_ok, k0, K, stride_am, stride_asm, BLOCK_M, BLOCK_K, FULL)
        w, ws = _load_w_swz(w_ptr, ws_ptr, offs_n, n_ok, k0, K, stride_wn, stride_wsn, BLOCK_K, FULL, EVEN_N,
                            ROWG)  # fmt: skip
        return _mma_fp8(acc, a, a_sc, w, ws, BLOCK_N, BLOCK_K, W_ASM)
    a, a_s = _load_a(a_ptr, as_ptr, slot, m_ok, k0, K, stride_am, stride_asm, A_FP4, BLOCK_M, BLOCK_K, FULL, A_SW)
    if B_REGS and not A_FP4:  # MXFP4 activations are decoded in registers already
        a = via_regs(a)
    if W_SWZ:
        w, ws = _load_w_swz(w_ptr, ws_ptr, offs_n, n_ok, k0, K, stride_wn, stride_wsn, BLOCK_K, FULL, EVEN_N,
                            ROWG)  # fmt: skip
        acc = _mma_swz(acc, a, a_s, w, ws, A_FP4, BLOCK_M, BLOCK_N, BLOCK_K, SWAP, W_ASM, W_MUL1)
    else:
        w, ws = _load_w(w_ptr, ws_ptr, offs_n, n_ok, k0, K, stride_wn, stride_wsn, BLOCK_K)
        acc = _mma(acc, a, a_s, w, ws, A_FP4, DOT_SCALED, BLOCK_M, BLOCK_N, BLOCK_K, SWAP, W_DEQ, W_ASM)
    return acc


@triton.jit
def _block_rows(sorted_ptr, expert_ids_ptr, pid_m, NUM, BLOCK_M: tl.constexpr):
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    slot = tl.load(sorted_ptr + offs_m)
    expert = tl.load(expert_ids_ptr + pid_m).to(tl.int64)
    return slot.to(tl.int64), slot < NUM, expert


@triton.jit
def _gemm1_epilogue(acc_g, acc_u, b_ptr, o_ptr, os_ptr, slot, m_ok, expert, offs_n, n_ok, pid_n, N, stride_be,
                    stride_om, stride_osm, alpha, limit, ACT: tl.constexpr, HAS_BIAS: tl.constexpr,
                    OUT_FP4: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    OUT_QDQ: tl.constexpr = False, OUT_FP8: tl.constexpr = False):  # fmt: skip
    """Biases, bf16 rounding, activation, and the bf16 (re-quantized MXFP4, or with OUT_QDQ bf16 on the MXFP4
    grid, or with OUT_FP8 e4m3 + one fp32 scale per row of the 128-column tile) store of h[slot, n]."""
    if HAS_BIAS:
        acc_g += tl.load(b_ptr + expert * stride_be + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        acc_u += tl.load(b_ptr + expert * stride_be + N + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    # SGLang rounds the GEMM1 output to bf16 before the activation; so do we.
    g = acc_g.to(tl.bfloat16).to(tl.float32)
    u = acc_u.to(tl.bfloat16).to(tl.float32)
    if ACT == 1:  # config.Act.SWIGLU_OAI
        g = tl.minimum(g, limit)
        u = tl.minimum(tl.maximum(u, -limit), limit)
        h = g * tl.sigmoid(alpha * g) * (u + 1.0)
    else:
        h = g * tl.sigmoid(g) * u
    h = h.to(tl.bfloat16)
    if OUT_QDQ:
        h = qdq_mxfp4_bf16(h.to(tl.float32), BLOCK_M, BLOCK_N)
    if OUT_FP8:  # BLOCK_N 128: the tile is one scale group
        q, sc = _fp8_group(h.to(tl.float32))
        tl.store(o_ptr + slot[:, None] * stride_om + offs_n[None, :], q, mask=m_ok[:, None] & n_ok[None, :])
        tl.store(os_ptr + slot * stride_osm + pid_n, sc, mask=m_ok)
    elif OUT_FP4:
        q, s = quant_mxfp4(h.to(tl.float32), BLOCK_M, BLOCK_N)
        ob = pid_n * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
        osb = pid_n * (BLOCK_N // 32) + tl.arange(0, BLOCK_N // 32)
        tl.store(o_ptr + slot[:, None] * stride_om + ob[None, :], q, mask=m_ok[:, None] & (ob[None, :] < N // 2))
        tl.store(os_ptr + slot[:, None] * stride_osm + osb[None, :], s,
                 mask=m_ok[:, None] & (osb[None, :] < N // 32))  # fmt: skip
    else:
        tl.store(o_ptr + slot[:, None] * stride_om + offs_n[None, :], h, mask=m_ok[:, None] & n_ok[None, :])


@triton.jit(do_not_specialize=["NUM"])  # sizes per call (overlays.warmup)
def moe_gemm1_kernel(
    a_ptr, as_ptr, w_ptr, ws_ptr, b_ptr, o_ptr, os_ptr, sorted_ptr, expert_ids_ptr, npad_ptr,
    NUM, N, K, stride_am, stride_asm, stride_we, stride_wn, stride_wse, stride_wsn, stride_be, stride_om,
    stride_osm, alpha, limit,
    TOPK: tl.constexpr, A_FP4: tl.constexpr, OUT_FP4: tl.constexpr, ACT: tl.constexpr, HAS_BIAS: tl.constexpr,
    DOT_SCALED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SWAP: tl.constexpr = False, W_DEQ: tl.constexpr = 0, W_ASM: tl.constexpr = False,
    part_ptr=None, cnt_ptr=None, SPLIT_K: tl.constexpr = 1, W_SWZ: tl.constexpr = False,
    W_MUL1: tl.constexpr = False, EVEN_N: tl.constexpr = False, B_REGS: tl.constexpr = False,
    OUT_QDQ: tl.constexpr = False, A_SW: tl.constexpr = False, W_ROWG: tl.constexpr = 1, A8: tl.constexpr = False,
    PDL: tl.constexpr = False,
):  # fmt: skip
    """h[slot, n] = act(x[slot // TOPK] . gate[n] + bg[n], x . up[n] + bu[n]); w rows = [gate (N) ; up (N)].
    SPLIT_K > 1 (grid axis 2; 1-2 tokens per expert, too few CTAs): each split writes fp32 partials, the last one
    to arrive (per-tile counter, left zeroed) sums them in split order and runs the epilogue.
    PDL: everything it reads comes from the sort and the quantizer, so it waits first, then lets GEMM2 launch."""
    pdl_wait(PDL)
    pdl_trigger(PDL)
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    if pid_m * BLOCK_M >= tl.load(npad_ptr):
        return
    slot, m_ok, expert = _block_rows(sorted_ptr, expert_ids_ptr, pid_m, NUM, BLOCK_M)
    rows = slot // TOPK
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    w_ptr += expert * stride_we
    ws_ptr += expert * stride_wse
    if SWAP:  # weights on the MMA's M side (registers on sm90), the few tokens on its narrow N side
        acc_g = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
        acc_u = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    else:
        acc_g = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        acc_u = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    per_split = tl.cdiv(tl.cdiv(K, BLOCK_K), SPLIT_K) * BLOCK_K
    k_lo = pid_k * per_split
    k_hi = min(k_lo + per_split, K)
    k_full = k_lo + (k_hi - k_lo) // BLOCK_K * BLOCK_K  # whole tiles: no K-bound masks in the main loop
    for k0 in range(k_lo, k_full, BLOCK_K):
        acc_g, acc_u = _gemm1_step(acc_g, acc_u, a_ptr, as_ptr, w_ptr, ws_ptr, rows, m_ok, offs_n, n_ok, k0, N, K,
                                   stride_am, stride_asm, stride_wn, stride_wsn, A_FP4, DOT_SCALED, BLOCK_M, BLOCK_N,
                                   BLOCK_K, SWAP, W_DEQ, W_ASM, W_SWZ, W_MUL1, True, EVEN_N, B_REGS, A_SW,
                                   W_ROWG, A8)  # fmt: skip
    if k_full < k_hi:
        acc_g, acc_u = _gemm1_step(acc_g, acc_u, a_ptr, as_ptr, w_ptr, ws_ptr, rows, m_ok, offs_n, n_ok, k_full, N,
                                   K, stride_am, stride_asm, stride_wn, stride_wsn, A_FP4, DOT_SCALED, BLOCK_M,
                                   BLOCK_N, BLOCK_K, SWAP, W_DEQ, W_ASM, W_SWZ, W_MUL1, False, EVEN_N,
                                   B_REGS, A_SW, W_ROWG, A8)  # fmt: skip
    if SWAP:
        acc_g = tl.trans(acc_g)
        acc_u = tl.trans(acc_u)
    if SPLIT_K == 1:
        _gemm1_epilogue(acc_g, acc_u, b_ptr, o_ptr, os_ptr, slot, m_ok, expert, offs_n, n_ok, pid_n, N, stride_be,
                        stride_om, stride_osm, alpha, limit, ACT, HAS_BIAS, OUT_FP4, BLOCK_M, BLOCK_N,
                        OUT_QDQ, A8)  # fmt: skip
    else:
        tile = pid_m * tl.num_programs(1) + pid_n
        t_elems: tl.constexpr = BLOCK_M * BLOCK_N
        local = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
        base = part_ptr + tile.to(tl.int64) * (SPLIT_K * 2 * t_elems)
        tl.store(base + pid_k * (2 * t_elems) + local, acc_g)
        tl.store(base + pid_k * (2 * t_elems) + t_elems + local, acc_u)
        tl.debug_barrier()  # every thread's partial is written before the arrival is published (release)
        arrived = tl.atomic_add(cnt_ptr + tile, 1, sem="acq_rel")
        if arrived == SPLIT_K - 1:
            acc_g = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            acc_u = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            for s in range(SPLIT_K):  # fixed order: the sum does not depend on which split came last
                acc_g += tl.load(base + s * (2 * t_elems) + local, cache_modifier=".cg")
                acc_u += tl.load(base + s * (2 * t_elems) + t_elems + local, cache_modifier=".cg")
            _gemm1_epilogue(acc_g, acc_u, b_ptr, o_ptr, os_ptr, slot, m_ok, expert, offs_n, n_ok, pid_n, N,
                            stride_be, stride_om, stride_osm, alpha, limit, ACT, HAS_BIAS, OUT_FP4, BLOCK_M,
                            BLOCK_N, OUT_QDQ, A8)  # fmt: skip
            tl.atomic_xchg(cnt_ptr + tile, 0)


@triton.jit
def _gemm2_store(acc, b_ptr, tw_ptr, o_ptr, slot, m_ok, expert, offs_n, n_ok, stride_be, stride_om,
                 HAS_BIAS: tl.constexpr, SWAP: tl.constexpr, tw=None):  # fmt: skip
    """Bias, top-k weight and the store of one tile (fp32, or bf16 with MoeBucket.y_bf16): one row per slot (no
    atomics, no zero-fill); combine_kernel sums a token's TOPK rows in a fixed order in fp32. `tw`: the slots' fp32
    weights if already loaded."""
    if SWAP:
        acc = tl.trans(acc)
    if HAS_BIAS:
        acc += tl.load(b_ptr + expert * stride_be + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if tw is None:
        tw = tl.load(tw_ptr + slot, mask=m_ok, other=0.0).to(tl.float32)
    acc *= tw[:, None]
    tl.store(o_ptr + slot[:, None] * stride_om + offs_n[None, :], acc.to(o_ptr.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])  # fmt: skip


@triton.jit(do_not_specialize=["NUM"])  # sizes per call (overlays.warmup)
def moe_gemm2_kernel(
    a_ptr, as_ptr, w_ptr, ws_ptr, b_ptr, tw_ptr, o_ptr, sorted_ptr, expert_ids_ptr, npad_ptr,
    NUM, N, K, stride_am, stride_asm, stride_we, stride_wn, stride_wse, stride_wsn, stride_be, stride_om,
    TOPK: tl.constexpr, A_FP4: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_SCALED: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SWAP: tl.constexpr = False, W_DEQ: tl.constexpr = 0, W_ASM: tl.constexpr = False, W_SWZ: tl.constexpr = False,
    W_MUL1: tl.constexpr = False, EVEN_N: tl.constexpr = False, B_REGS: tl.constexpr = False,
    N_GROUP: tl.constexpr = 1, A_SW: tl.constexpr = False, W_ROWG: tl.constexpr = 1, A8: tl.constexpr = False,
    PDL: tl.constexpr = False, PF_CHUNKS: tl.constexpr = 0,
):  # fmt: skip
    """y[slot, n] = topk_weight[slot] * (h[slot] . w2[n] + b2[n]) (fp32; summed per token by combine_kernel).
    N_GROUP > 1 (K % BLOCK_K == 0): each program walks N_GROUP consecutive N tiles (grid axis 1 shrinks by that
    much) in ONE loop over (tile, K step), storing a tile at its last K step, so the pipeliner keeps the next
    tile's weight loads in flight across the tile boundary. GEMM2's K is the expert's intermediate size
    (DeepSeek's TP8 shard: 256, two K steps): a one-tile program streams ~8 KiB of weights between its start-up
    latencies. (A nested loop with `flatten=True` compiled to synchronous loads and 8 barriers per K step.)
    PDL: the program may start during GEMM1's tail. The sort's outputs are complete by then (GEMM1 triggers after
    its own wait), so it finds its expert, asks L2 for the first PF_CHUNKS 128-code chunks of its rows of w2 (swz128
    units; scales left to the loop) and only then waits for GEMM1's h."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    if pid_m * BLOCK_M >= tl.load(npad_ptr):
        pdl_wait(PDL)  # an early exit waits too (overlays/pdl.py, rule 1)
        return
    slot, m_ok, expert = _block_rows(sorted_ptr, expert_ids_ptr, pid_m, NUM, BLOCK_M)
    w_ptr += expert * stride_we
    ws_ptr += expert * stride_wse
    if PDL and PF_CHUNKS > 0:  # the first 128-code chunks of the program's rows (all of DeepSeek's K 256)
        wb: tl.constexpr = w_ptr.dtype.element_ty.primitive_bitwidth // 8
        rows = tl.minimum(pid_n * (N_GROUP * BLOCK_N) + tl.arange(0, N_GROUP * BLOCK_N), N - 1)
        prefetch_ptrs(swz_unit_ptrs(w_ptr.to(tl.pointer_type(tl.int8), bitcast=True), rows, 0, stride_wn * wb,
                                    PF_CHUNKS, W_ROWG))  # fmt: skip
    pdl_wait(PDL)
    pdl_trigger(PDL)
    if SWAP:
        acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    else:
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if N_GROUP == 1:
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = offs_n < N
        k_full = K // BLOCK_K * BLOCK_K  # whole tiles: no K-bound masks in the main loop
        for k0 in range(0, k_full, BLOCK_K):
            acc = _gemm2_step(acc, a_ptr, as_ptr, w_ptr, ws_ptr, slot, m_ok, offs_n, n_ok, k0, K, stride_am,
                              stride_asm, stride_wn, stride_wsn, A_FP4, DOT_SCALED, BLOCK_M, BLOCK_N, BLOCK_K, SWAP,
                              W_DEQ, W_ASM, W_SWZ, W_MUL1, True, EVEN_N, B_REGS, A_SW, W_ROWG, A8)  # fmt: skip
        if k_full < K:
            acc = _gemm2_step(acc, a_ptr, as_ptr, w_ptr, ws_ptr, slot, m_ok, offs_n, n_ok, k_full, K, stride_am,
                              stride_asm, stride_wn, stride_wsn, A_FP4, DOT_SCALED, BLOCK_M, BLOCK_N, BLOCK_K, SWAP,
                              W_DEQ, W_ASM, W_SWZ, W_MUL1, False, EVEN_N, B_REGS, A_SW, W_ROWG, A8)  # fmt: skip
        _gemm2_store(acc, b_ptr, tw_ptr, o_ptr, slot, m_ok, expert, offs_n, n_ok, stride_be, stride_om, HAS_BIAS,
                     SWAP)  # fmt: skip
    else:
        # The slots' weights before the loop, not at each tile's store: there a load is a synchronous LDG per tile
        # (Triton cannot move it past the stores); here its latency hides under the first K steps (sm90 SASS of
        # w4a4:tpe<=4's GEMM2: 4 LDG per tile gone, 121 -> 89 registers). One tile per program loads it at the
        # store: held across the loop it would cost registers for nothing.
        tw = tl.load(tw_ptr + slot, mask=m_ok, other=0.0).to(tl.float32)
        kt_n = K // BLOCK_K
        kt = 0
        tile_n = pid_n * N_GROUP
        for _ in range(0, N_GROUP * kt_n):  # (tile, K step) pairs; counters, not a division per step
            offs_n = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
            n_ok = offs_n < N
            acc = _gemm2_step(acc, a_ptr, as_ptr, w_ptr, ws_ptr, slot, m_ok, offs_n, n_ok, kt * BLOCK_K, K,
                              stride_am, stride_asm, stride_wn, stride_wsn, A_FP4, DOT_SCALED, BLOCK_M, BLOCK_N,
                              BLOCK_K, SWAP, W_DEQ, W_ASM, W_SWZ, W_MUL1, True, EVEN_N, B_REGS, A_SW,
                              W_ROWG, A8)  # fmt: skip
            last = kt == kt_n - 1
            if last:
                _gemm2_store(acc, b_ptr, tw_ptr, o_ptr, slot, m_ok, expert, offs_n, n_ok, stride_be, stride_om,
                             HAS_BIAS, SWAP, tw)  # fmt: skip
                acc = tl.zeros_like(acc)
            tile_n = tl.where(last, tile_n + 1, tile_n)
            kt = tl.where(last, 0, kt + 1)


@triton.jit
def combine_kernel(y_ptr, ids_ptr, o_ptr, H, E, stride_ym, stride_om, scale,
                   TOPK: tl.constexpr, BLOCK_H: tl.constexpr, PDL: tl.constexpr = False):  # fmt: skip
    """out[t, :H] = bf16(scale * sum_k y[t * TOPK + k]) over the slots whose expert id is in [0, E) (EP-filtered
    slots were never written); deterministic: the same order whatever the routing. PDL: it triggers after its wait
    too, for a stock kernel after it that SGLang launches as a programmatic dependent (those wait before reading)."""
    pdl_wait(PDL)
    pdl_trigger(PDL)
    t = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    acc = tl.zeros([BLOCK_H], dtype=tl.float32)
    for k in tl.static_range(TOPK):
        e = tl.load(ids_ptr + t * TOPK + k)
        ok = (e >= 0) & (e < E)
        acc += tl.load(y_ptr + (t * TOPK + k) * stride_ym + offs, mask=(offs < H) & ok, other=0.0).to(tl.float32)
    tl.store(o_ptr + t * stride_om + offs, (acc * scale).to(tl.bfloat16), mask=offs < H)


@triton.jit(do_not_specialize=["M"])  # sizes per call (overlays.warmup)
def quant_rows_kernel(x_ptr, q_ptr, s_ptr, M, K, stride_xm, stride_qm, stride_sm,
                      BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, QDQ: tl.constexpr = False,
                      PDL: tl.constexpr = False):  # fmt: skip
    """Dynamic MXFP4 quantization of activation rows (w4a4 GEMM1 input): codes + scales, or with QDQ the bf16
    values they stand for into q_ptr ([M, K] bf16; s_ptr unused). PDL (in the MoE chain, after the sort): x was
    complete before the sort started and the outputs are fresh, so it runs beside the sort and waits at the end."""
    pdl_trigger(PDL)
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    ok = (r[:, None] < M) & (k[None, :] < K)
    x = tl.load(x_ptr + r[:, None].to(tl.int64) * stride_xm + k[None, :], mask=ok, other=0.0).to(tl.float32)
    if QDQ:
        tl.store(q_ptr + r[:, None].to(tl.int64) * stride_qm + k[None, :], qdq_mxfp4_bf16(x, BLOCK_R, BLOCK_K),
                 mask=ok)  # fmt: skip
    else:
        q, s = quant_mxfp4(x, BLOCK_R, BLOCK_K)
        kb = tl.program_id(1) * (BLOCK_K // 2) + tl.arange(0, BLOCK_K // 2)
        ks = tl.program_id(1) * (BLOCK_K // 32) + tl.arange(0, BLOCK_K // 32)
        tl.store(q_ptr + r[:, None].to(tl.int64) * stride_qm + kb[None, :], q,
                 mask=(r[:, None] < M) & (kb[None, :] < K // 2))  # fmt: skip
        tl.store(s_ptr + r[:, None].to(tl.int64) * stride_sm + ks[None, :], s,
                 mask=(r[:, None] < M) & (ks[None, :] < K // 32))  # fmt: skip
    pdl_wait(PDL)


@triton.jit(do_not_specialize=["M"])  # sizes per call (overlays.warmup)
def quant_fp8_rows_kernel(x_ptr, q_ptr, s_ptr, M, stride_xm, stride_qm, stride_sm, BLOCK_R: tl.constexpr,
                          PDL: tl.constexpr = False):  # fmt: skip
    """The w4a8 path's activations (A8): rows of x to e4m3 with one fp32 scale (amax / 448, floored at 1e-10) per
    128 columns; program (row block, column group) (reference.qdq_fp8_groups). PDL: as quant_rows_kernel."""
    pdl_trigger(PDL)
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    k = tl.program_id(1) * 128 + tl.arange(0, 128)
    ok = r[:, None] < M
    x = tl.load(x_ptr + r[:, None].to(tl.int64) * stride_xm + k[None, :], mask=ok, other=0.0).to(tl.float32)
    q, sc = _fp8_group(x)
    tl.store(q_ptr + r[:, None].to(tl.int64) * stride_qm + k[None, :], q, mask=ok)
    tl.store(s_ptr + r.to(tl.int64) * stride_sm + tl.program_id(1), sc, mask=r < M)
    pdl_wait(PDL)


# ---------------------------------------------------------------- routing sort (host side: sort.py)
# The kernel names keep their leading underscore: profiles classify kernels by name (eval/profile.py).


@triton.jit
def _rank_phase(ids_ptr, counts_ptr, rank_ptr, start, NUM, E, CHUNK: tl.constexpr):
    offs = start + tl.arange(0, CHUNK)
    e = tl.load(ids_ptr + offs, mask=offs < NUM, other=-1).to(tl.int32)
    ok = (offs < NUM) & (e >= 0) & (e < E)
    # Relaxed: only atomicity matters (the ranks are read after a barrier / the next launch). The default acq_rel
    # fenced every atomic (sm90 SASS: MEMBAR.ALL.GPU + CCTL.IVALL around each ATOMG), serializing a thread's four.
    r = tl.atomic_add(counts_ptr + e, 1, mask=ok, sem="relaxed")
    tl.store(rank_ptr + offs, r, mask=ok)


@triton.jit
def _offsets_phase(
    counts_ptr, offsets_ptr, sorted_ptr, expert_ids_ptr, npad_ptr, NUM, E, max_blocks,
    BLOCK_M: tl.constexpr, E_POW2: tl.constexpr, BCHUNK: tl.constexpr,
):  # fmt: skip
    offs_e = tl.arange(0, E_POW2)
    cnt = tl.load(counts_ptr + offs_e, mask=offs_e < E, other=0, cache_modifier=".cg")  # written by atomics
    padded = (cnt + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    starts = tl.cumsum(padded, axis=0) - padded
    total = tl.sum(padded, axis=0)
    tl.store(npad_ptr, total)
    tl.store(offsets_ptr + offs_e, starts, mask=offs_e < E)
    # Block -> expert: each expert writes its own blocks (one or two at decode), then the blocks past the end get
    # -1. Comparing every block with every expert's end instead cost ~700 instructions per 64 blocks (sm90 SASS:
    # a [64, E] compare and cross-warp reductions), most of a decode-sized sort.
    nblk = padded // BLOCK_M  # 0 for lanes past E (their count loads as 0)
    for j in range(0, tl.max(nblk, axis=0)):
        tl.store(expert_ids_ptr + starts // BLOCK_M + j, offs_e, mask=j < nblk)
    for b0 in range(total // BLOCK_M, max_blocks, BCHUNK * 16):
        b = b0 + tl.arange(0, BCHUNK * 16)
        tl.store(expert_ids_ptr + b, tl.full([BCHUNK * 16], -1, tl.int32), mask=b < max_blocks)
    # Sentinel everywhere first (the scatter phase, which runs after, overwrites the real slots): one vector
    # pass, cheaper than per-expert padding tails.
    for p0 in range(0, max_blocks * BLOCK_M, BCHUNK * 16):
        p = p0 + tl.arange(0, BCHUNK * 16)
        tl.store(sorted_ptr + p, tl.full([BCHUNK * 16], NUM, tl.int32), mask=p < max_blocks * BLOCK_M)


@triton.jit
def _scatter_phase(ids_ptr, rank_ptr, offsets_ptr, sorted_ptr, start, NUM, E, CHUNK: tl.constexpr):
    offs = start + tl.arange(0, CHUNK)
    e = tl.load(ids_ptr + offs, mask=offs < NUM, other=-1).to(tl.int32)
    ok = (offs < NUM) & (e >= 0) & (e < E)
    r = tl.load(rank_ptr + offs, mask=ok, other=0, cache_modifier=".cg")
    base = tl.load(offsets_ptr + e, mask=ok, other=0, cache_modifier=".cg")
    tl.store(sorted_ptr + base + r, offs, mask=ok)


@triton.jit(do_not_specialize=["NUM", "max_blocks"])  # sizes per call (overlays.warmup)
def _align_small_kernel(
    ids_ptr, counts_ptr, rank_ptr, offsets_ptr, sorted_ptr, expert_ids_ptr, npad_ptr, NUM, E, max_blocks,
    BLOCK_M: tl.constexpr, E_POW2: tl.constexpr, CHUNK: tl.constexpr, BCHUNK: tl.constexpr,
    PDL: tl.constexpr = False,
):  # fmt: skip
    pdl_trigger(PDL)  # the chain's first kernel (a plain launch): the quantizer may start beside it
    offs_e = tl.arange(0, E_POW2)
    tl.store(counts_ptr + offs_e, tl.zeros([E_POW2], tl.int32), mask=offs_e < E)
    tl.debug_barrier()
    for start in range(0, NUM, CHUNK):
        _rank_phase(ids_ptr, counts_ptr, rank_ptr, start, NUM, E, CHUNK)
    tl.debug_barrier()
    _offsets_phase(counts_ptr, offsets_ptr, sorted_ptr, expert_ids_ptr, npad_ptr, NUM, E, max_blocks,
                   BLOCK_M, E_POW2, BCHUNK)  # fmt: skip
    tl.debug_barrier()
    for start in range(0, NUM, CHUNK):
        _scatter_phase(ids_ptr, rank_ptr, offsets_ptr, sorted_ptr, start, NUM, E, CHUNK)


@triton.jit(do_not_specialize=["NUM"])  # sizes per call (overlays.warmup)
def _rank_kernel(ids_ptr, counts_ptr, rank_ptr, NUM, E, CHUNK: tl.constexpr):
    _rank_phase(ids_ptr, counts_ptr, rank_ptr, tl.program_id(0) * CHUNK, NUM, E, CHUNK)


@triton.jit(do_not_specialize=["NUM", "max_blocks"])  # sizes per call (overlays.warmup)
def _offsets_kernel(
    counts_ptr, offsets_ptr, sorted_ptr, expert_ids_ptr, npad_ptr, NUM, E, max_blocks,
    BLOCK_M: tl.constexpr, E_POW2: tl.constexpr, BCHUNK: tl.constexpr,
):  # fmt: skip
    _offsets_phase(counts_ptr, offsets_ptr, sorted_ptr, expert_ids_ptr, npad_ptr, NUM, E, max_blocks,
                   BLOCK_M, E_POW2, BCHUNK)  # fmt: skip


@triton.jit(do_not_specialize=["NUM"])  # sizes per call (overlays.warmup)
def _scatter_kernel(ids_ptr, rank_ptr, offsets_ptr, sorted_ptr, NUM, E, CHUNK: tl.constexpr):
    _scatter_phase(ids_ptr, rank_ptr, offsets_ptr, sorted_ptr, tl.program_id(0) * CHUNK, NUM, E, CHUNK)


__all__ = ["combine_kernel", "moe_gemm1_kernel", "moe_gemm2_kernel", "quant_fp8_rows_kernel", "quant_rows_kernel"]
