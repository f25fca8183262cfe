"""Triton kernels of the MXFP4 GEMM: C[M, N] = A[M, K] . W[N, K]^T with W in MXFP4 (E2M1 + E8M0 per 32 along K).

One kernel source; its mode constexprs stay ints here, the host spells them with config.py's enums:
- A_MODE (config.AMode): 0 = bf16 A used as is (w4a16, or A already quantize-dequantized), 1 = bf16 A quantized
  to MXFP4 in the A-load (w4a4, bit-exact with the reference quantizer; the dequant path multiplies the quantized
  values as bf16, `qdq_mxfp4_fast` below, A_ASM = its sm90 PTX), 2 = A already MXFP4 (packed codes + E8M0 scales).
- DOT_SCALED: False = dequantize to bf16 in registers and tl.dot (sm90, and the interpreter); True = native scaled
  MFMA through tl.dot_scaled e2m1 x e2m1 (gfx950; A_MODE 1 and 2 only).
- W_DEQ (config.WDeq; dequant path only, config key "deq" for plain weights): 0 = generic exact decode,
  interleaved; 1 = fast decode (mx.mxfp4_halves_bf16, inline PTX when W_ASM) interleaved back along K; 2 = fast
  decode kept as even/odd-K halves, A split to match, two K/2 dots (no interleave of the big operand); 3 = W loaded
  as int32 words and decoded 8 codes per asm instance into 8 K-strided tensors, eight K/8 dots; 4 = swz128 weights
  (mx.layout), chosen by the layout. W_ASM is False under the interpreter.
- B_REGS (CUDA, A_MODE 0): the bf16 A tile goes through registers in the K loop (mx.via_regs) so the dot's wgmmas
  issue back to back (Triton 3.6 makes the cp.async-pipelined smem operand "properly async" and ptxas then waits
  after every wgmma; PERF.md Round 5).
Tiles are computed transposed (acc[BLOCK_N, BLOCK_M] = W . A^T): the weight rows fill the MMA's M side, so a decode
batch of a few tokens only needs a narrow MMA N side (16 on sm90) instead of padding tokens to 64.
Split-K is deterministic and single-launch (the split count is a runtime argument, so one binary serves every
split count; the constexpr SPLIT only selects the epilogue): every split writes its fp32 partial tile, the last split
to arrive (per-tile counter) sums all partials in split order, RED of them per L2 round trip, and resets the counter
to 0 for the next launch. A decode call (M <= 64) is this one launch: A_MODE 1, split-K reduced in place.
The fused A-load quantizer (`qdq_mxfp4_fast`) lives here too: it is a helper of this kernel's A load only.
PDL (the bucket's pdl, sm90): the GEMM (and the quantizer before it on the prequant route) launches as a
programmatic dependent (overlays/pdl.py's rules): it may start while the kernel before it (SGLang's norm, on the
decode step) drains, asks L2 for its weight slice, and waits before it reads A.
"""

from __future__ import annotations

import triton
import triton.language as tl

from speedrun.overlays.mx import triton_helpers as mx
from speedrun.overlays.mx.triton_helpers import QDQ_BF16X2_ASM
from speedrun.overlays.pdl import pdl_trigger, pdl_wait, prefetch_ptrs

# ---------------------------------------------------------------- fused A-load quantizer
# MXFP4 quantize-dequantize of a bf16 activation tile in registers: the fused A load of the sm90 GEMM, through
# mx.triton_helpers.QDQ_BF16X2_ASM (its comment: why the rule is the reference's).


@triton.jit
def block_exp(x, R: tl.constexpr, C: tl.constexpr):
    """bf16/fp32 [R, C] -> biased E8M0 exponent int32 [R, C/32] (the reference's scale byte)."""
    amax = tl.max(tl.abs(x.to(tl.float32)).reshape(R, C // 32, 32), axis=2)
    field = (((amax.to(tl.uint32, bitcast=True) + 0x200000) >> 23) & 0xFF).to(tl.int32)
    return tl.where(field == 255, 254, tl.maximum(field - 2, 0))  # clamp(field - 129, -127, 127) + 127


@triton.jit
def _per_element(v, R: tl.constexpr, C: tl.constexpr):
    return tl.broadcast_to(v[:, :, None], (R, C // 32, 32)).reshape(R, C)


@triton.jit
def qdq_mxfp4_fast(x, R: tl.constexpr, C: tl.constexpr, ASM: tl.constexpr):
    """bf16 / fp16 / fp32 [R, C] -> bf16 dequant(quant_mxfp4(x)) (C % 32 == 0). ASM: the sm90 bf16x2 inline PTX
    (bf16 input only: it adds in bf16); else the same rule in fp32 Triton ops (the interpreter, fp16 input; p = 23,
    exact for any input the fp32 sum holds: one rounding to a multiple of u)."""
    eb = block_exp(x, R, C)
    if ASM and x.dtype == tl.bfloat16:
        e2 = _per_element(eb * 0x00800080, R, C)  # E << 7 in both halves
        s6 = _per_element(eb * 0x00800080 + 0x01400140, R, C)  # bf16 6 * 2**E = field E + 2, mantissa 0x40
        return tl.inline_asm_elementwise(QDQ_BF16X2_ASM, "=r,r,r,r,r,r", [x, e2, s6],
                                         dtype=tl.bfloat16, is_pure=True, pack=2)  # fmt: skip
    xf = x.to(tl.float32)
    bits = xf.to(tl.int32, bitcast=True)
    top = tl.maximum(bits & 0x7F800000, _per_element(eb << 23, R, C))
    c = (top + ((22 << 23) | 0x400000)).to(tl.float32, bitcast=True)  # 1.5 * 2**23 * 2**(max - 1)
    v = ((xf + c) - c).to(tl.int32, bitcast=True) & 0x7FFFFFFF
    v = tl.minimum(v, _per_element(((eb + 2) << 23) | 0x400000, R, C))  # 6 * 2**E
    return (v | (bits & -0x80000000)).to(tl.float32, bitcast=True).to(tl.bfloat16)


@triton.jit
def qdq_rows_kernel(x_ptr, o_ptr, R: tl.constexpr, ASM: tl.constexpr):
    rows = tl.program_id(0) * R + tl.arange(0, R)[:, None]
    offs = rows * 64 + tl.arange(0, 64)[None, :]
    tl.store(o_ptr + offs, qdq_mxfp4_fast(tl.load(x_ptr + offs), R, 64, ASM))


# ---------------------------------------------------------------- the GEMM


@triton.jit
def _tile_ids(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP: tl.constexpr):
    """Grouped order: GROUP consecutive M tiles share a band of N tiles, so W tiles are reused from L2."""
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP * num_n
    first_m = (pid // per_group) * GROUP
    size = min(num_m - first_m, GROUP)
    pid_m = first_m + (pid % per_group) % size
    pid_n = (pid % per_group) // size
    return pid_m, pid_n


@triton.jit
def _load_a(a_ptr, as_ptr, offs_m, k0, K, stride_am, stride_asm, stride_ask,
            A_MODE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr):  # fmt: skip
    """The A tile [BLOCK_M, BLOCK_K] as bf16 values (A_MODE 0/1: raw bf16; 2: packed + scales, both returned)."""
    rows = offs_m.to(tl.int64)[:, None]
    if A_MODE == 2:
        kb = k0 // 2 + tl.arange(0, BLOCK_K // 2)
        ks = k0 // 32 + tl.arange(0, BLOCK_K // 32)
        if EVEN_K:
            first = tl.load(a_ptr + rows * stride_am + kb[None, :])
            second = tl.load(as_ptr + rows * stride_asm + ks[None, :] * stride_ask)
        else:
            first = tl.load(a_ptr + rows * stride_am + kb[None, :], mask=kb[None, :] < K // 2, other=0)
            second = tl.load(as_ptr + rows * stride_asm + ks[None, :] * stride_ask, mask=ks[None, :] < K // 32,
                             other=127)  # fmt: skip
    else:
        kk = k0 + tl.arange(0, BLOCK_K)
        if EVEN_K:
            first = tl.load(a_ptr + rows * stride_am + kk[None, :])
        else:
            first = tl.load(a_ptr + rows * stride_am + kk[None, :], mask=kk[None, :] < K, other=0.0)
        second = first  # unused
    return first, second


@triton.jit
def _load_w_words(w_ptr, ws_ptr, offs_n, k0, K, stride_wn, stride_wsn, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr,
                  SWZ: tl.constexpr = False, ROWG: tl.constexpr = 1):  # fmt: skip
    """W tile as int32 words [BN, BK/8] (8 codes each) and its E8M0 scales. Plain layout: scales [BN, BK/32] (K % 32
    == 0 keeps words whole). SWZ, mx.layout's swz128 (K % 128 == 0): each lane's words of a 128-wide chunk are
    contiguous (16-byte loads in MMA fragment order) and every word has its scale: [BN, BK/8]; ROWG > 1: its rows
    stored in groups of ROWG (mx.layout group_rows: a K step reads ROWG x 64 contiguous bytes per group)."""
    rows = offs_n.to(tl.int64)
    kw = k0 // 8 + tl.arange(0, BLOCK_K // 8)
    w32 = w_ptr.to(tl.pointer_type(tl.int32))
    if SWZ:
        wp = mx.swz_tile_ptrs(w32, rows, k0, stride_wn // 4, BLOCK_K, ROWG)
        sp = mx.swz_tile_ptrs(ws_ptr, rows, k0, stride_wsn, BLOCK_K, ROWG, SCALES=True)
        s_ok = kw[None, :] < K // 8
    else:
        wp = w32 + rows[:, None] * (stride_wn // 4) + kw[None, :]
        ks = k0 // 32 + tl.arange(0, BLOCK_K // 32)
        sp = ws_ptr + rows[:, None] * stride_wsn + ks[None, :]
        s_ok = ks[None, :] < K // 32
    if EVEN_K:
        words = tl.load(wp)
        scales = tl.load(sp)
    else:
        words = tl.load(wp, mask=kw[None, :] < K // 8, other=0)
        scales = tl.load(sp, mask=s_ok, other=127)
    return words, scales


@triton.jit
def _load_w(w_ptr, ws_ptr, offs_n, k0, K, stride_wn, stride_wsn,
            BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr):  # fmt: skip
    ks = k0 // 32 + tl.arange(0, BLOCK_K // 32)
    rows = offs_n.to(tl.int64)[:, None]
    kb = k0 // 2 + tl.arange(0, BLOCK_K // 2)
    if EVEN_K:
        packed = tl.load(w_ptr + rows * stride_wn + kb[None, :])
        scales = tl.load(ws_ptr + rows * stride_wsn + ks[None, :])
    else:
        packed = tl.load(w_ptr + rows * stride_wn + kb[None, :], mask=kb[None, :] < K // 2, other=0)
        scales = tl.load(ws_ptr + rows * stride_wsn + ks[None, :], mask=ks[None, :] < K // 32, other=127)
    return packed, scales


@triton.jit
def _mma(acc, w_packed, w_scales, a, a_scales,
         A_MODE: tl.constexpr, DOT_SCALED: tl.constexpr, DOT_F32: tl.constexpr, BLOCK_M: tl.constexpr,
         BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, W_DEQ: tl.constexpr, W_ASM: tl.constexpr,
         W_MUL1: tl.constexpr, A_ASM: tl.constexpr = False):  # fmt: skip
    """acc[BLOCK_N, BLOCK_M] += W_tile . A_tile^T for one K step."""
    if DOT_SCALED:
        if A_MODE == 1:
            a_packed, a_sc = mx.quant_mxfp4(a.to(tl.float32), BLOCK_M, BLOCK_K)
        else:
            a_packed, a_sc = a, a_scales
        return tl.dot_scaled(w_packed, w_scales, "e2m1", tl.trans(a_packed), a_sc, "e2m1", acc)
    if W_DEQ == 4:  # if/elif/else, not early returns: Triton still traces the code after a constexpr return
        w = mx.mxfp4_swz_words_bf16(w_packed, w_scales, BLOCK_N, BLOCK_K, W_ASM, W_MUL1)
        acc = _dot(acc, w, _a_bf16(a, a_scales, A_MODE, BLOCK_M, BLOCK_K, A_ASM), DOT_F32)
    elif W_DEQ == 3:
        acc = _mma_words(acc, w_packed, w_scales, a, a_scales, A_MODE, DOT_F32, BLOCK_M, BLOCK_N, BLOCK_K, W_ASM, A_ASM)
    elif W_DEQ == 2:
        acc = _mma_halves(
            acc, w_packed, w_scales, a, a_scales, A_MODE, DOT_F32, BLOCK_M, BLOCK_N, BLOCK_K, W_ASM, A_ASM
        )
    else:
        if W_DEQ == 1:
            w = mx.mxfp4_to_bf16_fast(w_packed, w_scales, BLOCK_N, BLOCK_K, W_ASM)
        else:
            w = mx.mxfp4_to_bf16(w_packed, w_scales, BLOCK_N, BLOCK_K)
        acc = _dot(acc, w, _a_bf16(a, a_scales, A_MODE, BLOCK_M, BLOCK_K, A_ASM), DOT_F32)
    return acc


@triton.jit
def _a_bf16(a, a_scales, A_MODE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
            A_ASM: tl.constexpr = False):  # fmt: skip
    if A_MODE == 1:  # the reference quantizer's values (qdq_mxfp4_fast); A_ASM: the sm90 bf16x2 PTX
        return qdq_mxfp4_fast(a, BLOCK_M, BLOCK_K, A_ASM)
    elif A_MODE == 2:
        return mx.mxfp4_to_bf16(a, a_scales, BLOCK_M, BLOCK_K)
    else:
        return a.to(tl.bfloat16)


@triton.jit
def _mma_halves(acc, w_packed, w_scales, a, a_scales, A_MODE: tl.constexpr, DOT_F32: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, W_ASM: tl.constexpr,
                A_ASM: tl.constexpr):  # fmt: skip
    """W_DEQ=2: W decoded as (even-K, odd-K) halves, never interleaved back; A split the same way (A is the small
    operand at decode sizes, so any shuffle lands there), then two K/2 dots."""
    w_lo, w_hi = mx.mxfp4_halves_bf16(w_packed, w_scales, BLOCK_N, BLOCK_K, W_ASM)
    if A_MODE == 2:
        a_lo, a_hi = mx.mxfp4_halves_bf16(a, a_scales, BLOCK_M, BLOCK_K, False)
    else:
        a_lo, a_hi = mx.split_k_pairs(_a_bf16(a, a_scales, A_MODE, BLOCK_M, BLOCK_K, A_ASM), BLOCK_M, BLOCK_K)
    if DOT_F32:
        acc = tl.dot(w_lo.to(tl.float32), tl.trans(a_lo.to(tl.float32)), acc)
        return tl.dot(w_hi.to(tl.float32), tl.trans(a_hi.to(tl.float32)), acc)
    acc = tl.dot(w_lo, tl.trans(a_lo), acc)
    return tl.dot(w_hi, tl.trans(a_hi), acc)


@triton.jit
def _dot(acc, w, a, DOT_F32: tl.constexpr):
    if DOT_F32:
        return tl.dot(w.to(tl.float32), tl.trans(a.to(tl.float32)), acc)
    return tl.dot(w, tl.trans(a), acc)


@triton.jit
def _mma_words(acc, w_words, w_scales, a, a_scales, A_MODE: tl.constexpr, DOT_F32: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, W_ASM: tl.constexpr,
               A_ASM: tl.constexpr):  # fmt: skip
    """W_DEQ=3: W read as int32 words (8 codes each, no byte packing in registers), decoded into 8 tensors of K
    positions 8j+i; A split the same way; eight K/8 dots (BLOCK_K >= 128)."""
    w0, w1, w2, w3, w4, w5, w6, w7 = mx.mxfp4_words_bf16(w_words, w_scales, BLOCK_N, BLOCK_K, W_ASM)
    a_bf16 = _a_bf16(a, a_scales, A_MODE, BLOCK_M, BLOCK_K, A_ASM)
    a0, a1, a2, a3, a4, a5, a6, a7 = mx.split_k_octets(a_bf16, BLOCK_M, BLOCK_K)
    acc = _dot(acc, w0, a0, DOT_F32)
    acc = _dot(acc, w1, a1, DOT_F32)
    acc = _dot(acc, w2, a2, DOT_F32)
    acc = _dot(acc, w3, a3, DOT_F32)
    acc = _dot(acc, w4, a4, DOT_F32)
    acc = _dot(acc, w5, a5, DOT_F32)
    acc = _dot(acc, w6, a6, DOT_F32)
    return _dot(acc, w7, a7, DOT_F32)


@triton.jit(do_not_specialize=["M", "split_k", "k_per_split"])  # sizes per call (overlays.warmup)
def mxfp4_gemm_kernel(
    a_ptr, as_ptr, w_ptr, ws_ptr, c_ptr, part_ptr, cnt_ptr,
    M, N, K, split_k, k_per_split,
    stride_am, stride_asm, stride_ask, stride_wn, stride_wsn, stride_cm,
    A_MODE: tl.constexpr, DOT_SCALED: tl.constexpr, DOT_F32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SPLIT: tl.constexpr, GROUP: tl.constexpr, EVEN_K: tl.constexpr, W_DEQ: tl.constexpr = 0,
    W_ASM: tl.constexpr = False, W_MUL1: tl.constexpr = False, A_ASM: tl.constexpr = False, RED: tl.constexpr = 1,
    B_REGS: tl.constexpr = False, W_ROWG: tl.constexpr = 1, PDL: tl.constexpr = False,
):  # fmt: skip
    """Grid: GROUP 1 -> (N tiles, splits, M tiles), no index arithmetic; else (tiles, splits) in grouped order.
    `k_per_split` (K tiles per split) comes from the host: no division in the prologue, which issues the first
    weight loads sooner (decode CTAs run only a few K tiles)."""
    if GROUP == 1:
        pid_n = tl.program_id(0)
        pid_m = tl.program_id(2)
    else:
        pid_m, pid_n = _tile_ids(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP)
    pid_k = tl.program_id(1)
    # Rows past the edge are clamped to the last row (loads stay in bounds, no masks); their results are never
    # stored. A clamp is one instruction per row, a modulo by a runtime M or N ~20.
    offs_m = tl.minimum(pid_m * BLOCK_M + tl.arange(0, BLOCK_M), M - 1)
    offs_n = tl.minimum(pid_n * BLOCK_N + tl.arange(0, BLOCK_N), N - 1)
    kt0 = pid_k * k_per_split
    kt1 = min(kt0 + k_per_split, tl.cdiv(K, BLOCK_K))
    if PDL:  # the weights do not depend on the kernel before: the first K tiles into L2 while it drains
        _prefetch_w(w_ptr, offs_n, kt0, stride_wn, BLOCK_K, W_ROWG)
    pdl_wait(PDL)
    pdl_trigger(PDL)

    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for kt in range(kt0, kt1):
        k0 = kt * BLOCK_K
        if W_DEQ == 4:
            w_packed, w_scales = _load_w_words(w_ptr, ws_ptr, offs_n, k0, K, stride_wn, stride_wsn, BLOCK_K, EVEN_K,
                                               SWZ=True, ROWG=W_ROWG)  # fmt: skip
        elif W_DEQ == 3:
            w_packed, w_scales = _load_w_words(w_ptr, ws_ptr, offs_n, k0, K, stride_wn, stride_wsn, BLOCK_K, EVEN_K)
        else:
            w_packed, w_scales = _load_w(w_ptr, ws_ptr, offs_n, k0, K, stride_wn, stride_wsn, BLOCK_K, EVEN_K)
        a, a_scales = _load_a(a_ptr, as_ptr, offs_m, k0, K, stride_am, stride_asm, stride_ask,
                              A_MODE, BLOCK_M, BLOCK_K, EVEN_K)  # fmt: skip
        if B_REGS and A_MODE == 0:
            a = mx.via_regs(a)
        acc = _mma(acc, w_packed, w_scales, a, a_scales, A_MODE, DOT_SCALED, DOT_F32, BLOCK_M, BLOCK_N, BLOCK_K,
                   W_DEQ, W_ASM, W_MUL1, A_ASM)  # fmt: skip

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    c_ptrs = c_ptr + rm.to(tl.int64)[None, :] * stride_cm + rn[:, None]
    c_mask = (rm[None, :] < M) & (rn[:, None] < N)
    if SPLIT:
        _split_k_epilogue(acc, c_ptrs, c_mask, part_ptr, cnt_ptr, pid_m, pid_n, pid_k, N, split_k,
                          BLOCK_M, BLOCK_N, RED)  # fmt: skip
    else:
        tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=c_mask)


PF_CODES = tl.constexpr(512)  # K codes a program prefetches per weight row under PDL: its first tiles only


@triton.jit
def _prefetch_w(w_ptr, offs_n, kt0, stride_wn, BLOCK_K: tl.constexpr, ROWG: tl.constexpr):  # ROWG 1: not grouped
    """L2 prefetches of the first PF_CODES K codes of a program's weight rows from K tile kt0 on (one per row and
    128 codes: a swz128 unit, or 64 bytes of a plain row). Only the pipeline's first tiles: a whole split of a
    large weight, fetched ahead of the loads that use it, cost 10-24% in round 10's sweep. Scales (1/16 of the
    bytes) are left to the K loop. Codes past the row's end are never loaded (the prefetch does not fault)."""
    prefetch_ptrs(mx.swz_unit_ptrs(w_ptr, offs_n, (kt0 * BLOCK_K) // 128, stride_wn, PF_CODES // 128, ROWG))


@triton.jit
def _split_k_epilogue(acc, c_ptrs, c_mask, part_ptr, cnt_ptr, pid_m, pid_n, pid_k, N, split_k,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, RED: tl.constexpr):  # fmt: skip
    tile = pid_m * tl.cdiv(N, BLOCK_N) + pid_n
    tile_elems = BLOCK_N * BLOCK_M
    local = tl.arange(0, BLOCK_N)[:, None] * BLOCK_M + tl.arange(0, BLOCK_M)[None, :]
    base = part_ptr + tile.to(tl.int64) * (split_k * tile_elems)
    tl.store(base + pid_k * tile_elems + local, acc)
    # Every thread's partial must be written before one thread publishes the arrival (release, gpu scope).
    tl.debug_barrier()
    arrived = tl.atomic_add(cnt_ptr + tile, 1, sem="acq_rel")
    if arrived == split_k - 1:
        total = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        # Fixed order 0, 1, 2, ...: the sum does not depend on which split came last. RED partials per round are
        # loaded before any is added (one L2 round trip per RED splits, not per split: this serial tail is on
        # every split-K call's critical path); past the last split the loads give -0.0, which adds exactly.
        for s0 in range(0, split_k, RED):
            for i in tl.static_range(RED):
                total += tl.load(base + (s0 + i) * tile_elems + local, mask=s0 + i < split_k, other=-0.0,
                                 cache_modifier=".cg")  # fmt: skip
        tl.store(c_ptrs, total.to(c_ptrs.dtype.element_ty), mask=c_mask)
        tl.atomic_xchg(cnt_ptr + tile, 0)


@triton.jit(do_not_specialize=["M"])  # sizes per call (overlays.warmup)
def mxfp4_quant_kernel(
    x_ptr, q_ptr, s_ptr, M, K, stride_xm, stride_qm, stride_sm,
    QDQ: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr = False,
):  # fmt: skip
    """Standalone activation quantizer (large-M route): QDQ=True writes dequant(quant(x)) as bf16 [M, K]
    (the sm90 GEMM then reads A_MODE 0); QDQ=False writes packed codes [M, K/2] + E8M0 scales [M, K/32]. PDL: it
    waits before reading x, then lets the GEMM launch."""
    pdl_wait(PDL)
    pdl_trigger(PDL)
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    k0 = tl.program_id(1) * BLOCK_K
    rows = rm.to(tl.int64)[:, None]
    kk = k0 + tl.arange(0, BLOCK_K)
    x = tl.load(x_ptr + rows * stride_xm + kk[None, :], mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0)
    x = x.to(tl.float32)
    if QDQ:
        tl.store(q_ptr + rows * stride_qm + kk[None, :], mx.qdq_mxfp4_bf16(x, BLOCK_M, BLOCK_K),
                 mask=(rm[:, None] < M) & (kk[None, :] < K))  # fmt: skip
    else:
        packed, scales = mx.quant_mxfp4(x, BLOCK_M, BLOCK_K)
        kb = k0 // 2 + tl.arange(0, BLOCK_K // 2)
        ks = k0 // 32 + tl.arange(0, BLOCK_K // 32)
        tl.store(q_ptr + rows * stride_qm + kb[None, :], packed, mask=(rm[:, None] < M) & (kb[None, :] < K // 2))
        tl.store(s_ptr + rows * stride_sm + ks[None, :], scales, mask=(rm[:, None] < M) & (ks[None, :] < K // 32))


@triton.jit
def mxfp4_dequant_kernel(w_ptr, ws_ptr, o_ptr, N, K, stride_wsn, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                         SWZ: tl.constexpr = False, ROWG: tl.constexpr = 1):  # fmt: skip
    """W [N, K/2] + scales [N, stride_wsn] -> bf16 [N, K]: the dequantize-then-cuBLAS route. SWZ: W in swz128
    (K % 128 == 0, BLOCK_K % 128 == 0; rows in groups of ROWG), decoded back to plain k order in registers."""
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    k0 = tl.program_id(1) * BLOCK_K
    rows = rn.to(tl.int64)[:, None]
    ok = rn[:, None] < N
    kk = k0 + tl.arange(0, BLOCK_K)
    if SWZ:
        kw = k0 // 8 + tl.arange(0, BLOCK_K // 8)
        wok = ok & (kw[None, :] < K // 8)
        r = rn.to(tl.int64)
        words = tl.load(mx.swz_tile_ptrs(w_ptr.to(tl.pointer_type(tl.int32)), r, k0, K // 8, BLOCK_K, ROWG), mask=wok,
                        other=0)  # fmt: skip
        scales = tl.load(mx.swz_tile_ptrs(ws_ptr, r, k0, stride_wsn, BLOCK_K, ROWG, SCALES=True), mask=wok, other=127)
        vals = mx.mxfp4_swz_words_bf16(words, scales, BLOCK_N, BLOCK_K, False)
    else:
        kb = k0 // 2 + tl.arange(0, BLOCK_K // 2)
        ks = k0 // 32 + tl.arange(0, BLOCK_K // 32)
        packed = tl.load(w_ptr + rows * (K // 2) + kb[None, :], mask=ok & (kb[None, :] < K // 2), other=0)
        scales = tl.load(ws_ptr + rows * stride_wsn + ks[None, :], mask=ok & (ks[None, :] < K // 32), other=127)
        vals = mx.mxfp4_to_bf16(packed, scales, BLOCK_N, BLOCK_K)
    tl.store(o_ptr + rows * K + kk[None, :], vals, mask=ok & (kk[None, :] < K))
