"""Absorbed-MLA decode (DeepSeek V3/R1): one latent KV head of 576 = 512 latent + 64 rope, V = latent.

Two Triton kernels, both CUDA-graph safe (no host syncs; the split is computed on the device):

1. `_mla_partial_kernel` -- a flat, load-balanced split-KV. The batch's concatenated KV range
   [0, total) (total = kv_indptr[bs]) is cut into `num_programs` equal chunks; program p walks the
   sequences that intersect its chunk. For each (chunk, sequence) segment it runs an exp2 online
   softmax over BLOCK_N-token tiles for a block of heads: each latent tile is read once and feeds
   both QK (with the rope part) and PV. A segment that is a whole sequence writes the final output;
   otherwise it writes an fp32 partial (normalised o, log2-sum-exp) to slot `p + b`, which is
   unique per segment because segments are ordered along both chunks and sequences.
2. `_mla_merge_kernel` -- for each sequence split over several chunks, merges its partials
   (chunks p0..p1 -> slots p0+b..p1+b) with a log-sum-exp combine. The partial kernel writes the chunk it
   computed to one int32 of the workspace, so the merge finds the partials without the batch's lengths.

Equal chunks keep every program equally busy however the lengths in the batch are mixed. Round 3: SNAP (the
sm90 default) widens the chunk by <= 1/16 when that makes it a divisor or multiple of the longest sequence, so a
uniform batch is cut only at sequence boundaries (see `_chunk_size`). The round-3 sweep's other split modes
(sequence-aligned pieces, one program per sequence, PDL merge) lost or never shipped: PERF.md keeps their story.
Constexpr variants (configs/<arch>.json, see PERF.md): SPLIT_D=4 runs each step as four 128-column dot slices
(mma.sync holds a whole B operand in registers: the 512-column tile spills at 4 warps); CDT=f16 with CVT_ASM
computes fp8 caches in f16 (e4m3 -> f16 is exact) with one packed convert per tile.
A8W8 (fp8 caches, the finals' setting) computes in fp8 instead: q quantized to the cache's fp8 format per (sequence,
head) row on load, QK as an fp8 MMA, P scaled by P_SCALE into fp8 for an fp8 PV (or PV in f16: PV_FP8=False), fp32
accumulation; the q scale is folded into the softmax scale, the KV scales stay where they were (see _attend_a8w8).
`_mla_partial_mxfp4_kernel` is the partial kernel for an E2M1 cache (all 576 columns as E2M1 codes, two a byte,
one E8M0 scale per 32 (MXFP4, the qualifier's format) or per 16 (SGLang's own `fp4_mx_block16` pool)): the same
split and partials, the codes decoded to bf16 in registers, bf16 MMAs; the merge is the same.
"""

from __future__ import annotations

import triton
import triton.language as tl

from speedrun.overlays.mx.triton_helpers import mxfp4_to_bf16_fast
from speedrun.overlays.pdl import pdl_trigger, pdl_wait

D_LATENT = 512  # kv_lora_rank of DeepSeek V2/V3/R1: also the V head dim
D_ROPE = 64  # qk_rope_head_dim
D_QK = D_LATENT + D_ROPE


@triton.jit
def _chunk_size(kv_indptr, bs, num_programs, MIN_CHUNK: tl.constexpr, SNAP: tl.constexpr = False,
                BLOCK_B: tl.constexpr = 256):  # fmt: skip
    """Tokens per program: total / programs, at least MIN_CHUNK, rounded up to 16 (alignment only trims the
    split: tiles are masked anyway).
    SNAP: when a chunk within 1/16 above that fits the longest sequence a whole number of times (or k whole
    longest sequences), take it instead: uniform batches then cut only at sequence boundaries (bs >= programs:
    one whole sequence per program, no partials, nothing to merge) at the price of <= 6% fewer programs.
    Mixed batches keep equal chunks either way, so every program stays equally busy."""
    base = tl.load(kv_indptr).to(tl.int64)  # int64 throughout: loop-carried positions keep one type
    total = tl.load(kv_indptr + bs).to(tl.int64) - base
    chunk = tl.maximum(tl.cdiv(total, num_programs), MIN_CHUNK)
    chunk = tl.cdiv(chunk, 16) * 16
    if SNAP:
        offs = tl.arange(0, BLOCK_B)
        lo = tl.load(kv_indptr + offs, mask=offs < bs, other=0)
        hi = tl.load(kv_indptr + 1 + offs, mask=offs < bs, other=0)
        lmax = tl.maximum(tl.max(hi - lo, axis=0).to(tl.int64), 1)
        k = tl.maximum(lmax // chunk, 1)
        snapped = tl.where(lmax >= chunk, tl.cdiv(lmax, k), tl.cdiv(chunk, lmax) * lmax)  # always >= chunk
        chunk = tl.where(snapped * 16 <= chunk * 17, snapped, chunk)
    return base, total, chunk


@triton.jit
def _kv_tile(KV, row, col, mask_n, W: tl.constexpr, CDT: tl.constexpr, CVT_ASM: tl.constexpr):
    """A [BLOCK_N, W] slice of gathered latent rows, in the MMA dtype. Masked rows read as zeros: garbage (even
    NaN fp8 codes) in unused slots never reaches PV."""
    k = tl.load(KV + row[:, None] + col + tl.arange(0, W)[None, :], mask=mask_n[:, None], other=0.0)
    if CVT_ASM:
        # e4m3 -> f16 with the packed sm89+ convert (2 values per instruction). Not pure, on purpose: Triton
        # then cannot re-run the convert at each dot operand, so the fp8 tile has a single register use, the
        # pipeliner stages it with cp.async and both dots read one converted f16 copy from shared memory.
        return tl.inline_asm_elementwise(
            "{ .reg .b16 lo, hi; mov.b32 {lo, hi}, $2; cvt.rn.f16x2.e4m3x2 $0, lo; cvt.rn.f16x2.e4m3x2 $1, hi; }",
            "=r,=r,r", [k], dtype=tl.float16, is_pure=False, pack=4,
        )  # fmt: skip
    else:
        return k.to(CDT)


@triton.jit
def _q_tile(q_row, col, mask_h, W: tl.constexpr, CDT: tl.constexpr, q_mul):
    return (tl.load(q_row + col + tl.arange(0, W)[None, :], mask=mask_h[:, None], other=0.0) * q_mul).to(CDT)


@triton.jit
def _abs_max(q_row, col, mask_h, W: tl.constexpr):
    q = tl.load(q_row + col + tl.arange(0, W)[None, :], mask=mask_h[:, None], other=0.0).to(tl.float32)
    return tl.max(tl.max(tl.abs(q), axis=1), axis=0)


@triton.jit
def _q_multiplier(q_row, mask_h, DL: tl.constexpr, DR: tl.constexpr, CDT: tl.constexpr):
    """f16 MMA (fp8 KV) on a bf16 q: a power of two that brings max|q| under 2^14 (exact; undone in qk_scale),
    so q and the f16 scores stay finite however large the absorbed q is."""
    if CDT == tl.float16:
        amax = tl.maximum(_abs_max(q_row, 0, mask_h, DL), _abs_max(q_row, DL, mask_h, DR))
        return tl.exp2(-tl.maximum(tl.ceil(tl.log2(tl.maximum(amax, 1.0))) - 14.0, 0.0))
    else:
        return 1.0


@triton.jit
def _row_ptr(KV, loc, stride_kv_page, stride_kv_tok, PAGE_SIZE: tl.constexpr):
    if PAGE_SIZE == 1:
        return loc * stride_kv_tok
    else:
        return (loc // PAGE_SIZE) * stride_kv_page + (loc % PAGE_SIZE) * stride_kv_tok


@triton.jit
def _online_softmax(s, mask_n, qk_scale, m_i, INT_MAX: tl.constexpr = False):
    """One tile of the exp2 online softmax: (p, alpha, m). The caller folds p into its row sums: the 16-bit paths
    keep them elementwise, [BLOCK_H, BLOCK_N] summed once after the last tile, because with the tokens split
    across warps a per-tile row sum is a cross-warp reduction through shared memory (sm90 SASS, fp8 a16: 11 -> 8
    barriers and 528 -> 508 instructions per tile); the a8w8 paths, at the register limit, sum per tile.
    INT_MAX (a8w8): the running max is kept an integer (log2 domain), so every rescale is a power of two and
    fp8-quantized P is the same whatever the tiling (fp8 rounding commutes with powers of two)."""
    s = tl.where(mask_n[None, :], s * qk_scale, float("-inf"))
    if INT_MAX:
        m_new = tl.maximum(m_i, tl.ceil(tl.max(s, axis=1)))
    else:
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
    return tl.exp2(s - m_new[:, None]), tl.exp2(m_i - m_new), m_new


@triton.jit
def _tile_rows(KV, kv_indices, n0, seg_hi, stride_kv_page, stride_kv_tok, BLOCK_N: tl.constexpr,
               PAGE_SIZE: tl.constexpr):  # fmt: skip
    """The KV row pointers of tokens [n0, n0 + BLOCK_N) of a segment ending at seg_hi, and which are in it."""
    offs_n = n0 + tl.arange(0, BLOCK_N)
    mask_n = offs_n < seg_hi
    loc = tl.load(kv_indices + offs_n, mask=mask_n, other=0).to(tl.int64)
    return _row_ptr(KV, loc, stride_kv_page, stride_kv_tok, PAGE_SIZE), mask_n


@triton.jit
def _attend_whole(KV, q_row, mask_h, kv_indices, pos, seg_hi, qk_scale, stride_kv_page, stride_kv_tok,
                  BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, PAGE_SIZE: tl.constexpr, DL: tl.constexpr,
                  DR: tl.constexpr, CDT: tl.constexpr, CVT_ASM: tl.constexpr):  # fmt: skip
    """One segment, the 512 latent columns as one [BLOCK_N, 512] tile: (acc, m, l)."""
    q_mul = _q_multiplier(q_row, mask_h, DL, DR, CDT)
    q_lat = _q_tile(q_row, 0, mask_h, DL, CDT, q_mul)
    q_rope = _q_tile(q_row, DL, mask_h, DR, CDT, q_mul)
    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_acc = tl.zeros([BLOCK_H, BLOCK_N], tl.float32)
    acc = tl.zeros([BLOCK_H, DL], tl.float32)
    for n0 in range(pos, seg_hi, BLOCK_N):
        row, mask_n = _tile_rows(KV, kv_indices, n0, seg_hi, stride_kv_page, stride_kv_tok, BLOCK_N, PAGE_SIZE)
        k_lat = _kv_tile(KV, row, 0, mask_n, DL, CDT, CVT_ASM)
        k_rope = _kv_tile(KV, row, DL, mask_n, DR, CDT, CVT_ASM)
        s = tl.dot(q_lat, tl.trans(k_lat))
        s = tl.dot(q_rope, tl.trans(k_rope), acc=s)
        pr, alpha, m_i = _online_softmax(s, mask_n, qk_scale / q_mul, m_i)
        l_acc = l_acc * alpha[:, None] + pr
        acc = tl.dot(pr.to(CDT), k_lat, acc=acc * alpha[:, None])
    return acc, m_i, tl.sum(l_acc, axis=1)


@triton.jit
def _zeros4(R: tl.constexpr, C: tl.constexpr):
    """The four fp32 [R, C] accumulators of a result held in latent slices."""
    return (tl.zeros([R, C], tl.float32), tl.zeros([R, C], tl.float32), tl.zeros([R, C], tl.float32),
            tl.zeros([R, C], tl.float32))  # fmt: skip


@triton.jit
def _q_slices(q_row, mask_h, DL: tl.constexpr, DR: tl.constexpr, CDT: tl.constexpr, q_mul):
    """q as the 4 latent slices of DL/4 columns and the rope part, in the MMA dtype."""
    DC: tl.constexpr = DL // 4
    return (_q_tile(q_row, 0, mask_h, DC, CDT, q_mul), _q_tile(q_row, DC, mask_h, DC, CDT, q_mul),
            _q_tile(q_row, 2 * DC, mask_h, DC, CDT, q_mul), _q_tile(q_row, 3 * DC, mask_h, DC, CDT, q_mul),
            _q_tile(q_row, DL, mask_h, DR, CDT, q_mul))  # fmt: skip


@triton.jit
def _kv_slices(KV, row, mask_n, DL: tl.constexpr, DR: tl.constexpr, CDT: tl.constexpr, CVT_ASM: tl.constexpr):
    """A tile of latent rows as the 4 slices of DL/4 columns and the rope part (see _kv_tile)."""
    DC: tl.constexpr = DL // 4
    return (_kv_tile(KV, row, 0, mask_n, DC, CDT, CVT_ASM), _kv_tile(KV, row, DC, mask_n, DC, CDT, CVT_ASM),
            _kv_tile(KV, row, 2 * DC, mask_n, DC, CDT, CVT_ASM), _kv_tile(KV, row, 3 * DC, mask_n, DC, CDT, CVT_ASM),
            _kv_tile(KV, row, DL, mask_n, DR, CDT, CVT_ASM))  # fmt: skip


@triton.jit
def _attend_split4(KV, q_row, mask_h, kv_indices, pos, seg_hi, qk_scale, stride_kv_page, stride_kv_tok,
                   BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, PAGE_SIZE: tl.constexpr, DL: tl.constexpr,
                   DR: tl.constexpr, CDT: tl.constexpr, CVT_ASM: tl.constexpr, QK_CHAINS: tl.constexpr):  # fmt: skip
    """Same segment, the latent columns in 4 slices of 128: each dot operand is a quarter of the tile, so
    Triton's mma.sync path (which holds a whole B operand in registers) stays far from spilling."""
    DC: tl.constexpr = DL // 4
    q_mul = _q_multiplier(q_row, mask_h, DL, DR, CDT)
    q0, q1, q2, q3, q_rope = _q_slices(q_row, mask_h, DL, DR, CDT, q_mul)
    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_acc = tl.zeros([BLOCK_H, BLOCK_N], tl.float32)
    acc0, acc1, acc2, acc3 = _zeros4(BLOCK_H, DC)
    for n0 in range(pos, seg_hi, BLOCK_N):
        row, mask_n = _tile_rows(KV, kv_indices, n0, seg_hi, stride_kv_page, stride_kv_tok, BLOCK_N, PAGE_SIZE)
        k0, k1, k2, k3, kr = _kv_slices(KV, row, mask_n, DL, DR, CDT, CVT_ASM)
        s = tl.dot(q_rope, tl.trans(kr))
        s = tl.dot(q0, tl.trans(k0), acc=s)
        s = tl.dot(q1, tl.trans(k1), acc=s)
        if QK_CHAINS == 2:
            # A second accumulator: each warp's QK product is a chain of dependent mma.sync (one per 16 columns);
            # two chains of 20 and 16 instead of one of 36. Each chain has two dots: Triton folds
            # `x + dot(a, b, 0)` back into one chain, but never a dot whose accumulator is not zero.
            s2 = tl.dot(q2, tl.trans(k2))
            s = s + tl.dot(q3, tl.trans(k3), acc=s2)
        else:
            s = tl.dot(q2, tl.trans(k2), acc=s)
            s = tl.dot(q3, tl.trans(k3), acc=s)
        pr, alpha, m_i = _online_softmax(s, mask_n, qk_scale / q_mul, m_i)
        l_acc = l_acc * alpha[:, None] + pr
        pc = pr.to(CDT)
        acc0 = tl.dot(pc, k0, acc=acc0 * alpha[:, None])
        acc1 = tl.dot(pc, k1, acc=acc1 * alpha[:, None])
        acc2 = tl.dot(pc, k2, acc=acc2 * alpha[:, None])
        acc3 = tl.dot(pc, k3, acc=acc3 * alpha[:, None])
    return acc0, acc1, acc2, acc3, m_i, tl.sum(l_acc, axis=1)


@triton.jit
def _attend_tokens16(KV, q_row, mask_h, kv_indices, pos, seg_hi, qk_scale, stride_kv_page, stride_kv_tok,
                     BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, PAGE_SIZE: tl.constexpr, DL: tl.constexpr,
                     DR: tl.constexpr, CDT: tl.constexpr, CVT_ASM: tl.constexpr):  # fmt: skip
    """16-bit compute with the tokens as the MMA's M (sm90 wgmma): S^T = K q^T, O^T = V^T P^T, in 4 latent slices
    of 128 columns (accumulators [128, H]). With the heads as M (mma.sync, M = 16) every warp reads all of q from
    shared memory for each tile (half the LDSM bytes of the fp8 kernel, PERF.md round 6); a warpgroup's wgmma
    reads each shared operand once. V^T is K's tile taken transposed, which 16-bit wgmma accepts as it is.
    Returns the 4 output slices [BLOCK_H, 128], m, l."""
    DC: tl.constexpr = DL // 4
    q_mul = _q_multiplier(q_row, mask_h, DL, DR, CDT)
    q0, q1, q2, q3, qr = _q_slices(q_row, mask_h, DL, DR, CDT, q_mul)
    sc = qk_scale / q_mul
    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_acc = tl.zeros([BLOCK_N, BLOCK_H], tl.float32)
    a0, a1, a2, a3 = _zeros4(DC, BLOCK_H)
    for n0 in range(pos, seg_hi, BLOCK_N):
        row, mask_n = _tile_rows(KV, kv_indices, n0, seg_hi, stride_kv_page, stride_kv_tok, BLOCK_N, PAGE_SIZE)
        k0, k1, k2, k3, kr = _kv_slices(KV, row, mask_n, DL, DR, CDT, CVT_ASM)
        s_t = tl.dot(kr, tl.trans(qr))
        s_t = tl.dot(k0, tl.trans(q0), acc=s_t)
        s_t = tl.dot(k1, tl.trans(q1), acc=s_t)
        s_t = tl.dot(k2, tl.trans(q2), acc=s_t)
        s_t = tl.dot(k3, tl.trans(q3), acc=s_t)  # [BLOCK_N, BLOCK_H]
        s_t = tl.where(mask_n[:, None], s_t * sc[None, :], float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s_t, axis=0))
        alpha = tl.exp2(m_i - m_new)
        p_t = tl.exp2(s_t - m_new[None, :])
        l_acc = l_acc * alpha[None, :] + p_t  # summed once after the last tile (see _online_softmax)
        m_i = m_new
        pc = p_t.to(CDT)
        a0 = tl.dot(tl.trans(k0), pc, acc=a0 * alpha[None, :])
        a1 = tl.dot(tl.trans(k1), pc, acc=a1 * alpha[None, :])
        a2 = tl.dot(tl.trans(k2), pc, acc=a2 * alpha[None, :])
        a3 = tl.dot(tl.trans(k3), pc, acc=a3 * alpha[None, :])
    return tl.trans(a0), tl.trans(a1), tl.trans(a2), tl.trans(a3), m_i, tl.sum(l_acc, axis=0)


# a8w8: P in [0, 1] is scaled by 2^8 before its fp8 cast (exact; e4m3 then keeps p >= 2^-17 from underflowing)
P_SCALE = tl.constexpr(256.0)


@triton.jit
def _q_fp8_mul(q_row, mask_h, DL: tl.constexpr, DR: tl.constexpr, Q_EXP: tl.constexpr):
    """a8w8: q is quantized per (sequence, head) row, fused into the load (no extra kernel, graph safe), with a
    power-of-two multiplier that puts max|q| of the row in [2^(Q_EXP-1), 2^Q_EXP) (Q_EXP = 8 for e4m3fn: <= 448,
    so no clamp is needed). A power of two is exact (scores are divided by it exactly; the torch reference
    reproduces q's codes bit for bit) and costs no precision: e4m3 keeps 3 mantissa bits at any magnitude, the
    scale only keeps small elements out of the subnormal range, and a per-row scale does that at least as well
    as SGLang's per-tensor one. Returns the multiplier [BLOCK_H]."""
    q_lat = tl.load(q_row + tl.arange(0, DL)[None, :], mask=mask_h[:, None], other=0.0).to(tl.float32)
    q_rope = tl.load(q_row + DL + tl.arange(0, DR)[None, :], mask=mask_h[:, None], other=0.0).to(tl.float32)
    amax = tl.maximum(tl.max(tl.abs(q_lat), axis=1), tl.max(tl.abs(q_rope), axis=1))
    e = ((amax.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127  # floor(log2(amax)) for normal amax
    k = tl.minimum(tl.maximum(Q_EXP - 1 - e, -126), 127)  # an all-zero (masked) row gets 2^127: still 0
    return ((k + 127) << 23).to(tl.float32, bitcast=True)


@triton.jit
def _q8_tile(q_row, col, mask_h, W: tl.constexpr, q_mul, Q8: tl.constexpr):
    """W columns of q from `col`, quantized with the row multipliers."""
    q = tl.load(q_row + col + tl.arange(0, W)[None, :], mask=mask_h[:, None], other=0.0).to(tl.float32)
    return (q * q_mul[:, None]).to(Q8)


@triton.jit
def _kv_raw(KV, row, col, mask_n, W: tl.constexpr):
    return tl.load(KV + row[:, None] + col + tl.arange(0, W)[None, :], mask=mask_n[:, None], other=0.0)


@triton.jit
def _pv_t(acc_t, k, p8, p16, alpha, PV_FP8: tl.constexpr, CVT_ASM: tl.constexpr):
    """Tokens-as-M PV of one latent slice: acc^T * alpha + V^T P^T, in fp8 or with V upcast to f16."""
    if PV_FP8:
        return tl.dot(tl.trans(k), p8, acc=acc_t * alpha[None, :])
    else:
        if CVT_ASM:  # see _kv_tile: one packed convert, not pure, so Triton keeps one f16 copy
            v = tl.inline_asm_elementwise(
                "{ .reg .b16 lo, hi; mov.b32 {lo, hi}, $2; cvt.rn.f16x2.e4m3x2 $0, lo; cvt.rn.f16x2.e4m3x2 $1, hi; }",
                "=r,=r,r", [k], dtype=tl.float16, is_pure=False, pack=4,
            )  # fmt: skip
        else:
            v = k.to(tl.float16)
        return tl.dot(tl.trans(v), p16, acc=acc_t * alpha[None, :])


@triton.jit
def _attend_a8w8_tokens(KV, q_row, mask_h, kv_indices, pos, seg_hi, qk_scale, stride_kv_page, stride_kv_tok,
                        BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, PAGE_SIZE: tl.constexpr, DL: tl.constexpr,
                        DR: tl.constexpr, PV_FP8: tl.constexpr, Q_EXP: tl.constexpr,
                        CVT_ASM: tl.constexpr):  # fmt: skip
    """a8w8 with the tokens as the MMA's M dimension (sm90): S^T = K q^T, O^T = V^T P^T. wgmma needs M >= 64 and
    decode has 16 heads, so heads as M would waste 3/4 of every MMA (and Triton maps an M = 16 fp8 dot to f16
    mma.sync). The latent runs as 4 slices of 128 columns (4 accumulators [128, H]). Both fp8 wgmma operands
    must be K-major: K (for QK) and q^T are; V^T (for PV) is not, so Triton transposes each V slice through
    shared memory (PERF.md: what that costs; PV_FP8=False runs PV in f16 instead, where wgmma takes V^T as is).
    Returns the 4 output slices [BLOCK_H, 128] (divided by P_SCALE), m, l."""
    Q8: tl.constexpr = KV.dtype.element_ty
    DC: tl.constexpr = DL // 4
    q_mul = _q_fp8_mul(q_row, mask_h, DL, DR, Q_EXP)
    sc = qk_scale / q_mul
    q0 = tl.trans(_q8_tile(q_row, 0, mask_h, DC, q_mul, Q8))
    q1 = tl.trans(_q8_tile(q_row, DC, mask_h, DC, q_mul, Q8))
    q2 = tl.trans(_q8_tile(q_row, 2 * DC, mask_h, DC, q_mul, Q8))
    q3 = tl.trans(_q8_tile(q_row, 3 * DC, mask_h, DC, q_mul, Q8))
    qr = tl.trans(_q8_tile(q_row, DL, mask_h, DR, q_mul, Q8))
    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    a0, a1, a2, a3 = _zeros4(DC, BLOCK_H)
    for n0 in range(pos, seg_hi, BLOCK_N):
        row, mask_n = _tile_rows(KV, kv_indices, n0, seg_hi, stride_kv_page, stride_kv_tok, BLOCK_N, PAGE_SIZE)
        k0 = _kv_raw(KV, row, 0, mask_n, DC)
        k1 = _kv_raw(KV, row, DC, mask_n, DC)
        k2 = _kv_raw(KV, row, 2 * DC, mask_n, DC)
        k3 = _kv_raw(KV, row, 3 * DC, mask_n, DC)
        s_t = tl.dot(_kv_raw(KV, row, DL, mask_n, DR), qr)
        s_t = tl.dot(k0, q0, acc=s_t)
        s_t = tl.dot(k1, q1, acc=s_t)
        s_t = tl.dot(k2, q2, acc=s_t)
        s_t = tl.dot(k3, q3, acc=s_t)  # [BLOCK_N, BLOCK_H]
        s_t = tl.where(mask_n[:, None], s_t * sc[None, :], float("-inf"))
        m_new = tl.maximum(m_i, tl.ceil(tl.max(s_t, axis=0)))  # an integer: see _online_softmax's INT_MAX
        alpha = tl.exp2(m_i - m_new)
        p_t = tl.exp2(s_t - m_new[None, :])
        l_i = l_i * alpha + tl.sum(p_t, axis=0)
        m_i = m_new
        p8 = (p_t * P_SCALE).to(Q8)
        p16 = (p_t * P_SCALE).to(tl.float16)
        a0 = _pv_t(a0, k0, p8, p16, alpha, PV_FP8, CVT_ASM)
        a1 = _pv_t(a1, k1, p8, p16, alpha, PV_FP8, CVT_ASM)
        a2 = _pv_t(a2, k2, p8, p16, alpha, PV_FP8, CVT_ASM)
        a3 = _pv_t(a3, k3, p8, p16, alpha, PV_FP8, CVT_ASM)
    r: tl.constexpr = 1.0 / P_SCALE
    return tl.trans(a0) * r, tl.trans(a1) * r, tl.trans(a2) * r, tl.trans(a3) * r, m_i, l_i


@triton.jit
def _attend_a8w8_heads(KV, q_row, mask_h, kv_indices, pos, seg_hi, qk_scale, stride_kv_page, stride_kv_tok,
                       BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, PAGE_SIZE: tl.constexpr, DL: tl.constexpr,
                       DR: tl.constexpr, PV_FP8: tl.constexpr, Q_EXP: tl.constexpr):  # fmt: skip
    """a8w8 with the heads as M (gfx950: fp8 MFMA takes M = 16 natively and reads its operands from registers),
    one [BLOCK_N, 512] tile per step: (acc [BLOCK_H, 512] divided by P_SCALE, m, l)."""
    Q8: tl.constexpr = KV.dtype.element_ty
    q_mul = _q_fp8_mul(q_row, mask_h, DL, DR, Q_EXP)
    sc = qk_scale / q_mul
    q_lat = _q8_tile(q_row, 0, mask_h, DL, q_mul, Q8)
    q_rope = _q8_tile(q_row, DL, mask_h, DR, q_mul, Q8)
    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, DL], tl.float32)
    for n0 in range(pos, seg_hi, BLOCK_N):
        row, mask_n = _tile_rows(KV, kv_indices, n0, seg_hi, stride_kv_page, stride_kv_tok, BLOCK_N, PAGE_SIZE)
        k_lat = _kv_raw(KV, row, 0, mask_n, DL)
        s = tl.dot(q_rope, tl.trans(_kv_raw(KV, row, DL, mask_n, DR)))
        s = tl.dot(q_lat, tl.trans(k_lat), acc=s)
        pr, alpha, m_i = _online_softmax(s, mask_n, sc[:, None], m_i, True)
        l_i = l_i * alpha + tl.sum(pr, axis=1)
        if PV_FP8:
            acc = tl.dot((pr * P_SCALE).to(Q8), k_lat, acc=acc * alpha[:, None])
        else:
            acc = tl.dot((pr * P_SCALE).to(tl.float16), k_lat.to(tl.float16), acc=acc * alpha[:, None])
    return acc * (1.0 / P_SCALE), m_i, l_i


@triton.jit
def _store_out(O, PartO, acc, l_i, final, b, slot, offs_h, mask_h, v_scale, stride_ob, stride_oh,
               H: tl.constexpr, W: tl.constexpr, DL: tl.constexpr):  # fmt: skip
    """W columns of a segment's result (O and PartO point at the first): the final output, or its fp32
    partial in slot `slot`."""
    out = acc / l_i[:, None]
    offs = tl.arange(0, W)
    if final:
        o_ptr = O + b.to(tl.int64) * stride_ob + offs_h[:, None] * stride_oh + offs[None, :]
        tl.store(o_ptr, (out * v_scale).to(O.dtype.element_ty), mask=mask_h[:, None])
    else:
        tl.store(PartO + (slot * H + offs_h[:, None]) * DL + offs[None, :], out, mask=mask_h[:, None])


@triton.jit
def _store_quarters(O, PartO, acc0, acc1, acc2, acc3, l_i, final, b, slot, offs_h, mask_h, v_scale, stride_ob,
                    stride_oh, H: tl.constexpr, DL: tl.constexpr):  # fmt: skip
    """A result held as four DL/4-column accumulators (split_d=4, a8w8 tokens-as-M), stored quarter by quarter."""
    DC: tl.constexpr = DL // 4
    _store_out(O, PartO, acc0, l_i, final, b, slot, offs_h, mask_h, v_scale, stride_ob, stride_oh, H, DC, DL)
    _store_out(O + DC, PartO + DC, acc1, l_i, final, b, slot, offs_h, mask_h, v_scale, stride_ob, stride_oh,
               H, DC, DL)  # fmt: skip
    _store_out(O + 2 * DC, PartO + 2 * DC, acc2, l_i, final, b, slot, offs_h, mask_h, v_scale, stride_ob, stride_oh,
               H, DC, DL)  # fmt: skip
    _store_out(O + 3 * DC, PartO + 3 * DC, acc3, l_i, final, b, slot, offs_h, mask_h, v_scale, stride_ob, stride_oh,
               H, DC, DL)  # fmt: skip


@triton.jit
def _segment(Q, KV, O, PartO, PartLse, kv_idx, b, slot, pos, seg_hi, seq_lo, seq_hi, qk_scale, v_scale, offs_h,
             mask_h, stride_qb, stride_qh, stride_kv_page, stride_kv_tok, stride_ob, stride_oh, H: tl.constexpr,
             BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, PAGE_SIZE: tl.constexpr, DL: tl.constexpr,
             DR: tl.constexpr, SPLIT_D: tl.constexpr, CDT: tl.constexpr, CVT_ASM: tl.constexpr,
             QK_CHAINS: tl.constexpr, A8W8: tl.constexpr, TOKENS_M: tl.constexpr, PV_FP8: tl.constexpr,
             Q_EXP: tl.constexpr):  # fmt: skip
    """Tokens [pos, seg_hi) of sequence b: the final output if that is the whole sequence, else a partial."""
    q_row = Q + b.to(tl.int64) * stride_qb + offs_h[:, None] * stride_qh
    final = (pos == seq_lo) & (seg_hi == seq_hi)
    if A8W8 and TOKENS_M:
        acc0, acc1, acc2, acc3, m_i, l_i = _attend_a8w8_tokens(
            KV, q_row, mask_h, kv_idx, pos, seg_hi, qk_scale, stride_kv_page, stride_kv_tok,
            BLOCK_H, BLOCK_N, PAGE_SIZE, DL, DR, PV_FP8, Q_EXP, CVT_ASM,
        )  # fmt: skip
        _store_quarters(O, PartO, acc0, acc1, acc2, acc3, l_i, final, b, slot, offs_h, mask_h, v_scale, stride_ob,
                        stride_oh, H, DL)  # fmt: skip
    elif A8W8:
        acc, m_i, l_i = _attend_a8w8_heads(
            KV, q_row, mask_h, kv_idx, pos, seg_hi, qk_scale, stride_kv_page, stride_kv_tok,
            BLOCK_H, BLOCK_N, PAGE_SIZE, DL, DR, PV_FP8, Q_EXP,
        )  # fmt: skip
        _store_out(O, PartO, acc, l_i, final, b, slot, offs_h, mask_h, v_scale, stride_ob, stride_oh,
                   H, DL, DL)  # fmt: skip
    elif TOKENS_M:
        acc0, acc1, acc2, acc3, m_i, l_i = _attend_tokens16(
            KV, q_row, mask_h, kv_idx, pos, seg_hi, qk_scale, stride_kv_page, stride_kv_tok,
            BLOCK_H, BLOCK_N, PAGE_SIZE, DL, DR, CDT, CVT_ASM,
        )  # fmt: skip
        _store_quarters(O, PartO, acc0, acc1, acc2, acc3, l_i, final, b, slot, offs_h, mask_h, v_scale, stride_ob,
                        stride_oh, H, DL)  # fmt: skip
    elif SPLIT_D == 4:
        acc0, acc1, acc2, acc3, m_i, l_i = _attend_split4(
            KV, q_row, mask_h, kv_idx, pos, seg_hi, qk_scale, stride_kv_page, stride_kv_tok,
            BLOCK_H, BLOCK_N, PAGE_SIZE, DL, DR, CDT, CVT_ASM, QK_CHAINS,
        )  # fmt: skip
        _store_quarters(O, PartO, acc0, acc1, acc2, acc3, l_i, final, b, slot, offs_h, mask_h, v_scale, stride_ob,
                        stride_oh, H, DL)  # fmt: skip
    else:
        acc, m_i, l_i = _attend_whole(
            KV, q_row, mask_h, kv_idx, pos, seg_hi, qk_scale, stride_kv_page, stride_kv_tok,
            BLOCK_H, BLOCK_N, PAGE_SIZE, DL, DR, CDT, CVT_ASM,
        )  # fmt: skip
        _store_out(O, PartO, acc, l_i, final, b, slot, offs_h, mask_h, v_scale, stride_ob, stride_oh,
                   H, DL, DL)  # fmt: skip
    if (pos != seq_lo) | (seg_hi != seq_hi):  # a partial: its log2-sum-exp for the merge
        tl.store(PartLse + slot * H + offs_h, m_i + tl.log2(l_i), mask=mask_h)


@triton.jit
def _first_seq(kv_indptr, bs, base, total, start, BLOCK_B: tl.constexpr):
    """The first sequence of a chunk starting at token `start`: the number of sequences that end at or before it."""
    offs_bb = tl.arange(0, BLOCK_B)
    ends = tl.load(kv_indptr + 1 + offs_bb, mask=offs_bb < bs, other=0).to(tl.int64) - base
    ends = tl.where(offs_bb < bs, ends, total + 1)
    return tl.sum((ends <= start).to(tl.int32), axis=0)


@triton.jit
def _mla_partial_kernel(
    Q,
    KV,
    O,
    PartO,
    PartLse,
    Chunk,  # out: the chunk, one int32, for the merge
    kv_indptr,
    kv_indices,
    qk_scale,  # sm_scale * k_scale * log2(e): scores go straight to the exp2 domain
    v_scale,
    bs,
    num_programs,
    stride_qb,
    stride_qh,
    stride_kv_page,
    stride_kv_tok,
    stride_ob,
    stride_oh,
    H: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_B: tl.constexpr,
    MIN_CHUNK: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    DL: tl.constexpr,
    DR: tl.constexpr,
    SPLIT_D: tl.constexpr = 1,  # 1: one [BLOCK_N, 512] tile per step; 4: four 128-column slices
    CDT: tl.constexpr = tl.bfloat16,  # MMA input dtype (q's; f16 for fp8 KV: e4m3 -> f16 is exact and packed)
    CVT_ASM: tl.constexpr = False,  # e4m3fn KV on sm89+: the packed inline-asm convert (never in the interpreter)
    SNAP: tl.constexpr = False,  # chunk snapped to the longest sequence when close (see _chunk_size)
    QK_CHAINS: tl.constexpr = 1,  # SPLIT_D=4: independent QK accumulators (shorter dependent mma chains)
    A8W8: tl.constexpr = False,  # fp8 KV: q quantized to fp8, fp8 MMAs (_attend_a8w8); CDT/CVT_ASM/SPLIT_D unused
    TOKENS_M: tl.constexpr = False,  # tokens as the MMA M dimension (sm90 wgmma): a8w8, or 16-bit (_attend_tokens16)
    PV_FP8: tl.constexpr = True,  # A8W8: P and V in fp8 for PV (False: f16)
    Q_EXP: tl.constexpr = 8,  # A8W8: 2^Q_EXP <= the largest finite value of KV's fp8 format (q's target range)
    PDL: tl.constexpr = False,  # launched as a programmatic dependent (overlays/pdl.py): wait, then trigger the merge
):
    NHG: tl.constexpr = (H + BLOCK_H - 1) // BLOCK_H
    pdl_wait(PDL)  # q and the cache come from the kernels before
    pdl_trigger(PDL)
    pid = tl.program_id(0)
    hg = pid % NHG  # head groups of one chunk are neighbours: they share its KV tiles in L2
    p = pid // NHG
    offs_h = hg * BLOCK_H + tl.arange(0, BLOCK_H)
    mask_h = offs_h < H
    base = tl.load(kv_indptr).to(tl.int64)
    kv_idx = kv_indices + base
    base, total, chunk = _chunk_size(kv_indptr, bs, num_programs, MIN_CHUNK, SNAP, BLOCK_B)
    if pid == 0:
        tl.store(Chunk, chunk.to(tl.int32))
    start = p.to(tl.int64) * chunk
    end = tl.minimum(start + chunk, total)
    # First sequence of this chunk: the number of sequences that end at or before `start` (inline, as measured:
    # _first_seq, the same sum as a helper, reorders a few of this kernel's sm90 instructions)
    offs_bb = tl.arange(0, BLOCK_B)
    ends = tl.load(kv_indptr + 1 + offs_bb, mask=offs_bb < bs, other=0).to(tl.int64) - base
    ends = tl.where(offs_bb < bs, ends, total + 1)
    b = tl.sum((ends <= start).to(tl.int32), axis=0)
    pos = start
    while pos < end:
        seq_lo = tl.load(kv_indptr + b).to(tl.int64) - base
        seq_hi = tl.load(kv_indptr + b + 1).to(tl.int64) - base
        seg_hi = tl.minimum(seq_hi, end)
        if seg_hi > pos:  # empty sequences own no segment
            _segment(Q, KV, O, PartO, PartLse, kv_idx, b, (p + b).to(tl.int64), pos, seg_hi, seq_lo, seq_hi,
                     qk_scale, v_scale, offs_h, mask_h, stride_qb, stride_qh, stride_kv_page, stride_kv_tok,
                     stride_ob, stride_oh, H, BLOCK_H, BLOCK_N, PAGE_SIZE, DL, DR, SPLIT_D, CDT,
                     CVT_ASM, QK_CHAINS, A8W8, TOKENS_M, PV_FP8, Q_EXP)  # fmt: skip
        pos = tl.maximum(seg_hi, pos)
        b += 1


@triton.jit
def _mx_tile(KV, KS, loc, mask_n, col, stride_kv, stride_ks, BLOCK_N: tl.constexpr, W: tl.constexpr,
             SB: tl.constexpr, ASM: tl.constexpr):  # fmt: skip
    """Columns [col, col + W) of gathered E2M1 rows (a scale byte per SB of them) as bf16 [BLOCK_N, W]; masked rows
    are zeros (codes 0, scale byte 127: never the NaN scale 255 of an unused slot)."""
    codes = tl.load(KV + loc[:, None] * stride_kv + col // 2 + tl.arange(0, W // 2)[None, :], mask=mask_n[:, None],
                    other=0)  # fmt: skip
    scales = tl.load(KS + loc[:, None] * stride_ks + col // SB + tl.arange(0, W // SB)[None, :],
                     mask=mask_n[:, None], other=127)  # fmt: skip
    return mxfp4_to_bf16_fast(codes, scales, BLOCK_N, W, ASM, SB)


@triton.jit
def _attend_mxfp4(KV, KS, q_row, mask_h, kv_indices, pos, seg_hi, qk_scale, stride_kv, stride_ks,
                  BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, DL: tl.constexpr, DR: tl.constexpr,
                  SB: tl.constexpr, ASM: tl.constexpr):  # fmt: skip
    """One segment over an MXFP4 cache, the 512 latent columns as one [BLOCK_N, 512] tile: (acc, m, l)."""
    q_lat = tl.load(q_row + tl.arange(0, DL)[None, :], mask=mask_h[:, None], other=0.0)
    q_rope = tl.load(q_row + DL + tl.arange(0, DR)[None, :], mask=mask_h[:, None], other=0.0)
    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_acc = tl.zeros([BLOCK_H, BLOCK_N], tl.float32)
    acc = tl.zeros([BLOCK_H, DL], tl.float32)
    for n0 in range(pos, seg_hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < seg_hi
        loc = tl.load(kv_indices + offs_n, mask=mask_n, other=0).to(tl.int64)
        k_lat = _mx_tile(KV, KS, loc, mask_n, 0, stride_kv, stride_ks, BLOCK_N, DL, SB, ASM)
        k_rope = _mx_tile(KV, KS, loc, mask_n, DL, stride_kv, stride_ks, BLOCK_N, DR, SB, ASM)
        s = tl.dot(q_lat, tl.trans(k_lat))
        s = tl.dot(q_rope, tl.trans(k_rope), acc=s)
        pr, alpha, m_i = _online_softmax(s, mask_n, qk_scale, m_i)
        l_acc = l_acc * alpha[:, None] + pr
        acc = tl.dot(pr.to(tl.bfloat16), k_lat, acc=acc * alpha[:, None])
    return acc, m_i, tl.sum(l_acc, axis=1)


@triton.jit
def _mla_partial_mxfp4_kernel(
    Q,
    KV,  # uint8 [slots, 288]: E2M1 codes of the 576 columns, element 2i in the low nibble
    KS,  # uint8 [slots, 576 / SB]: E8M0 scale of each SB columns
    O,
    PartO,
    PartLse,
    Chunk,
    kv_indptr,
    kv_indices,
    qk_scale,  # sm_scale * log2(e)
    bs,
    num_programs,
    stride_qb,
    stride_qh,
    stride_kv,
    stride_ks,
    stride_ob,
    stride_oh,
    H: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_B: tl.constexpr,
    MIN_CHUNK: tl.constexpr,
    DL: tl.constexpr,
    DR: tl.constexpr,
    SB: tl.constexpr = 32,  # columns a scale covers: 32 (MX, the qualifier's) or 16 (SGLang's fp4_mx_block16 pool)
    SNAP: tl.constexpr = False,
    ASM: tl.constexpr = False,  # sm90: the inline-PTX E2M1 decode (never in the interpreter)
    PDL: tl.constexpr = False,
):
    """_mla_partial_kernel's split and partials (its docstring) over an E2M1 cache, 16-bit compute."""
    NHG: tl.constexpr = (H + BLOCK_H - 1) // BLOCK_H
    pdl_wait(PDL)
    pdl_trigger(PDL)
    pid = tl.program_id(0)
    hg = pid % NHG
    p = pid // NHG
    offs_h = hg * BLOCK_H + tl.arange(0, BLOCK_H)
    mask_h = offs_h < H
    kv_idx = kv_indices + tl.load(kv_indptr).to(tl.int64)
    base, total, chunk = _chunk_size(kv_indptr, bs, num_programs, MIN_CHUNK, SNAP, BLOCK_B)
    if pid == 0:
        tl.store(Chunk, chunk.to(tl.int32))
    start = p.to(tl.int64) * chunk
    end = tl.minimum(start + chunk, total)
    b = _first_seq(kv_indptr, bs, base, total, start, BLOCK_B)
    pos = start
    while pos < end:
        seq_lo = tl.load(kv_indptr + b).to(tl.int64) - base
        seq_hi = tl.load(kv_indptr + b + 1).to(tl.int64) - base
        seg_hi = tl.minimum(seq_hi, end)
        if seg_hi > pos:
            slot = (p + b).to(tl.int64)
            q_row = Q + b.to(tl.int64) * stride_qb + offs_h[:, None] * stride_qh
            acc, m_i, l_i = _attend_mxfp4(KV, KS, q_row, mask_h, kv_idx, pos, seg_hi, qk_scale, stride_kv, stride_ks,
                                          BLOCK_H, BLOCK_N, DL, DR, SB, ASM)  # fmt: skip
            final = (pos == seq_lo) & (seg_hi == seq_hi)
            _store_out(O, PartO, acc, l_i, final, b, slot, offs_h, mask_h, 1.0, stride_ob, stride_oh, H, DL, DL)
            if (pos != seq_lo) | (seg_hi != seq_hi):  # a partial: its log2-sum-exp for the merge
                tl.store(PartLse + slot * H + offs_h, m_i + tl.log2(l_i), mask=mask_h)
        pos = tl.maximum(seg_hi, pos)
        b += 1


@triton.jit
def _mla_merge_kernel(
    O,
    PartO,
    PartLse,
    Chunk,  # the split's chunk (tokens) as the partial kernel computed it: one int32
    kv_indptr,
    v_scale,
    stride_ob,
    stride_oh,
    H: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    DL: tl.constexpr,
    PDL: tl.constexpr = False,
):
    """One program per (sequence, head, column block). A whole sequence exits after four independent scalar
    loads: the chunk is read, not recomputed (recomputing it took the batch's lengths as a vector in every
    program), and the [BLOCK_P, BLOCK_DV] tile is small, so an exiting program holds few registers. PDL: launched
    as a programmatic dependent of the partial kernel (overlays/pdl.py): it waits before anything, then triggers."""
    pdl_wait(PDL)
    pdl_trigger(PDL)
    b = tl.program_id(0)
    h = tl.program_id(1)
    dv = tl.program_id(2) * BLOCK_DV + tl.arange(0, BLOCK_DV)
    base = tl.load(kv_indptr).to(tl.int64)
    seq_lo = tl.load(kv_indptr + b).to(tl.int64) - base
    seq_hi = tl.load(kv_indptr + b + 1).to(tl.int64) - base
    chunk = tl.load(Chunk).to(tl.int64)
    o_ptr = O + b.to(tl.int64) * stride_ob + h * stride_oh + dv
    if seq_hi <= seq_lo:  # an empty sequence attends to nothing: zeros, never garbage
        tl.store(o_ptr, tl.zeros([BLOCK_DV], tl.float32).to(O.dtype.element_ty))
    else:
        # Piece j of the sequence is chunk p0 + j; its partial lives at slot p0 + j + b.
        p0 = seq_lo // chunk
        n = (seq_hi - 1) // chunk - p0 + 1
        if n > 1:  # otherwise the partial kernel already wrote the final output
            m = tl.full([BLOCK_DV], float("-inf"), tl.float32)  # kept as a vector: same value in every lane
            den = tl.zeros([BLOCK_DV], tl.float32)
            acc = tl.zeros([BLOCK_DV], tl.float32)
            for j0 in range(0, n, BLOCK_P):
                offs_j = j0 + tl.arange(0, BLOCK_P)
                mask_p = offs_j < n
                slot = p0 + b + offs_j
                lse = tl.load(PartLse + slot * H + h, mask=mask_p, other=float("-inf"))
                part = tl.load(PartO + (slot[:, None] * H + h) * DL + dv[None, :], mask=mask_p[:, None], other=0.0)
                m_new = tl.maximum(m, tl.max(lse, axis=0))
                alpha = tl.exp2(m - m_new)
                w = tl.exp2(lse[:, None] - m_new[None, :])
                den = den * alpha + tl.sum(w, axis=0)
                acc = acc * alpha + tl.sum(w * part, axis=0)
                m = m_new
            tl.store(o_ptr, (acc / den * v_scale).to(O.dtype.element_ty))


@triton.jit
def _kv_store_kernel(K, LOC, CACHE, SCALE, stride_k, stride_c, D: tl.constexpr, BLOCK_D: tl.constexpr,
                     SCALED: tl.constexpr, SATURATE: tl.constexpr):  # fmt: skip
    """Row i of the decode step's latent k (16-bit [bs, D]) into the e4m3fn cache row loc[i].
    Why one kernel: SGLang's triton decode path stores an fp8 cache in three launches a layer (k.div_(k_scale)
    in place, the cast, the index_put), each a few µs at decode batch sizes. The bytes are SGLang's: SCALED divides
    as torch's CUDA kernel does and leaves the quotient in k's dtype, as the in-place div does; SATURATE is what the
    running torch's cast does past 448 (torch >= 2.12: 448; before: NaN from 464 up, and for inf)."""
    i = tl.program_id(0)
    col = tl.arange(0, BLOCK_D)
    mask = col < D
    k = tl.load(K + i * stride_k + col, mask=mask)
    if SCALED:  # torch's CUDA div of a 16-bit tensor by a 0-dim CUDA fp32 one: both as k's dtype, then fp32 div.rn
        scale = tl.load(SCALE).to(K.dtype.element_ty).to(tl.float32)
        k = tl.div_rn(k.to(tl.float32), scale).to(K.dtype.element_ty)
    loc = tl.load(LOC + i).to(tl.int64)
    x = k.to(tl.float32)  # exact: one rounding to e4m3fn, to nearest even, as torch's cast
    out = x.to(CACHE.dtype.element_ty)
    if not SATURATE:  # the cast saturates; torch < 2.12 writes NaN (0x7f, signed) where RNE passes 448
        bits = out.to(tl.uint8, bitcast=True)
        sign = ((x.to(tl.uint32, bitcast=True) >> 31) << 7).to(tl.uint8)
        nan = (tl.abs(x) > 464.0) | (x != x)  # inf too
        out = tl.where(nan, sign | 0x7F, bits).to(CACHE.dtype.element_ty, bitcast=True)
    tl.store(CACHE + loc * stride_c + col, out, mask=mask)
