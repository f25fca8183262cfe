"""MXFP4 -> FP8 e4m3 with one fp32 scale_inv per 128x128 block: the weights stock SGLang's FP8 block kernels take
(DeepSeek-R1's FP8 checkpoint format). Launched by mx/fp8.py's `to_fp8` for the MoE's and the GEMM's large-M
routes (overlays/mxfp4_moe/stock_fp8.py, overlays/mxfp4_gemm/stock_fp8.py)."""

from __future__ import annotations

import triton
import triton.language as tl

from speedrun.overlays.mx.triton_helpers import (
    mxfp4_swz_words_bf16,
    mxfp4_to_bf16,
    pow2_f32,
    swz_tile_ptrs,
)


@triton.jit
def _load_plain(w_ptr, ws_ptr, rows, ok, k0, K, stride_wn, stride_wsn, BLOCK: tl.constexpr):
    """Packed codes [BLOCK, BLOCK/2] + E8M0 [BLOCK, BLOCK/32] (masked bytes read as +0 with scale 1)."""
    kb = k0 // 2 + tl.arange(0, BLOCK // 2)
    ks = k0 // 32 + tl.arange(0, BLOCK // 32)
    w = tl.load(w_ptr + rows[:, None] * stride_wn + kb[None, :], mask=ok[:, None] & (kb[None, :] < K // 2), other=0)
    ws = tl.load(ws_ptr + rows[:, None] * stride_wsn + ks[None, :], mask=ok[:, None] & (ks[None, :] < K // 32),
                 other=127)  # fmt: skip
    return w, ws


@triton.jit
def _load_swz(w_ptr, ws_ptr, rows, ok, k0, K, stride_wn, stride_wsn, BLOCK: tl.constexpr, ROWG: tl.constexpr):
    """swz128 int32 words [BLOCK, BLOCK/8] (row stride in words; K padded to 128; rows in groups of ROWG) + each
    word's E8M0 scale."""
    kw = k0 // 8 + tl.arange(0, BLOCK // 8)
    m = ok[:, None] & (kw[None, :] < tl.cdiv(K, 128) * 16)
    w = tl.load(swz_tile_ptrs(w_ptr, rows, k0, stride_wn, BLOCK, ROWG), mask=m, other=0)
    ws = tl.load(swz_tile_ptrs(ws_ptr, rows, k0, stride_wsn, BLOCK, ROWG, SCALES=True), mask=m, other=127)
    return w, ws


@triton.jit
def mxfp4_to_fp8_kernel(w_ptr, ws_ptr, q_ptr, qs_ptr, ROWS, K, stride_we, stride_wn, stride_wse, stride_wsn,
                        stride_qe, stride_qn, stride_qse, stride_qsn,
                        W_SWZ: tl.constexpr, W_ASM: tl.constexpr, BLOCK: tl.constexpr = 128,
                        W_ROWG: tl.constexpr = 1):  # fmt: skip
    """One 128x128 tile of matrix e's MXFP4 weights [ROWS, K] (plain, or swz128: one tile = one 128-code chunk;
    W_ROWG: its rows' group, mx.layout) ->
    float8_e4m3fn [ROWS, K] + one fp32 scale_inv per tile (the layout stock's FP8 block GEMM and MoE take).

    scale_inv = 2**ceil(log2(amax / 448)), a power of two as DeepSeek's checkpoint (and eval's fp8_block_quant)
    have it: dividing by it is exact, only the cast to e4m3 rounds. e2m1 x 2**s has at most 2 significant bits
    and e4m3 keeps 4, so a value is exact unless it falls under e4m3's normal range, where the grid is 2**-9. With
    amax = m * 2**ea (m in {1, 1.5}) scale_inv = 2**(ea - 8), and a block of scale 2**s has its lowest bit at
    2**(s - 1): exact when s >= ea - 16, so (ea <= smax + 2, code 6 the largest) whenever every block of the tile
    has s >= smax - 14 (smax: the tile's largest block scale; the MoE's test_stock_fp8.py checks both sides of the
    edge). Otherwise each value is within scale_inv * 2**-10 (half that grid step, round-to-nearest-even; values
    under it flush to 0) of the truth: lossy only for the tile's smallest blocks."""
    e = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    k0 = tl.program_id(2) * BLOCK
    ok = rows < ROWS
    if W_SWZ:
        w, ws = _load_swz(w_ptr + e * stride_we, ws_ptr + e * stride_wse, rows, ok, k0, K, stride_wn, stride_wsn,
                          BLOCK, W_ROWG)  # fmt: skip
        x = mxfp4_swz_words_bf16(w, ws, BLOCK, BLOCK, W_ASM).to(tl.float32)
    else:
        w, ws = _load_plain(w_ptr + e * stride_we, ws_ptr + e * stride_wse, rows, ok, k0, K, stride_wn, stride_wsn,
                            BLOCK)  # fmt: skip
        x = mxfp4_to_bf16(w, ws, BLOCK, BLOCK).to(tl.float32)
    amax = tl.max(tl.max(tl.abs(x), axis=1), axis=0)
    bits = amax.to(tl.int32, bitcast=True)
    # ceil(log2(amax / 448)) from the bits: floor(log2 amax) - 8, + 1 when the mantissa exceeds 448's (1.75)
    c = ((bits >> 23) & 0xFF) - 127 - 8 + ((bits & 0x7FFFFF) > 0x600000).to(tl.int32)
    c = tl.where(amax > 0, tl.maximum(c, -126), 0)  # an all-zero tile: scale 1; tiny ones stay normal fp32
    q = (x * pow2_f32(-c)).to(tl.float8e4nv)
    cols = k0 + tl.arange(0, BLOCK)
    tl.store(q_ptr + e * stride_qe + rows[:, None] * stride_qn + cols[None, :], q,
             mask=ok[:, None] & (cols[None, :] < K))  # fmt: skip
    tl.store(qs_ptr + e * stride_qse + tl.program_id(1) * stride_qsn + tl.program_id(2), pow2_f32(c))


__all__ = ["mxfp4_to_fp8_kernel"]
