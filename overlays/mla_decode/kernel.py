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
   (chunks p0..p1 -> slots p0+b..p1+b) with a log-sum-exp combine.

Equal chunks keep every program equally busy however the lengths in the batch are mixed.
"""

from __future__ import annotations

import triton
import triton.language as tl

D_LATENT = 512  # kv_lora_rank of DeepSeek V2/V3/R1: also the V head dim
D_ROPE = 64  # qk_rope_head_dim
D_QK = D_LATENT + D_ROPE
CHUNK_ALIGN = 16  # chunk granularity (tokens); alignment only trims the split, tiles are masked anyway


@triton.jit
def _chunk_size(kv_indptr, bs, num_programs, MIN_CHUNK: tl.constexpr):
    """Tokens per program: total / programs, at least MIN_CHUNK, rounded to CHUNK_ALIGN (16)."""
    base = tl.load(kv_indptr).to(tl.int64)  # int64 throughout: loop-carried positions keep one type
    total = tl.load(kv_indptr + bs).to(tl.int64) - base
    chunk = tl.maximum(tl.cdiv(total, num_programs), MIN_CHUNK)
    chunk = tl.cdiv(chunk, 16) * 16
    return base, total, chunk


@triton.jit
def _mla_partial_kernel(
    Q,
    KV,
    O,
    PartO,
    PartLse,
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
):
    NHG: tl.constexpr = (H + BLOCK_H - 1) // BLOCK_H
    pid = tl.program_id(0)
    hg = pid % NHG  # head groups of one chunk are neighbours: they share its KV tiles in L2
    p = pid // NHG
    base, total, chunk = _chunk_size(kv_indptr, bs, num_programs, MIN_CHUNK)
    start = p.to(tl.int64) * chunk
    end = tl.minimum(start + chunk, total)

    offs_h = hg * BLOCK_H + tl.arange(0, BLOCK_H)
    mask_h = offs_h < H
    offs_l = tl.arange(0, DL)
    offs_r = tl.arange(0, DR)
    offs_bb = tl.arange(0, BLOCK_B)

    # First sequence of this chunk: the number of sequences that end at or before `start`.
    ends = tl.load(kv_indptr + 1 + offs_bb, mask=offs_bb < bs, other=0).to(tl.int64) - base
    ends = tl.where(offs_bb < bs, ends, total + 1)
    b = tl.sum((ends <= start).to(tl.int32), axis=0)
    pos = start
    while pos < end:
        seq_lo = tl.load(kv_indptr + b).to(tl.int64) - base
        seq_hi = tl.load(kv_indptr + b + 1).to(tl.int64) - base
        seg_hi = tl.minimum(seq_hi, end)
        if seg_hi > pos:  # empty sequences own no segment
            q_row = Q + b.to(tl.int64) * stride_qb + offs_h[:, None] * stride_qh
            q_lat = tl.load(q_row + offs_l[None, :], mask=mask_h[:, None], other=0.0)
            q_rope = tl.load(q_row + DL + offs_r[None, :], mask=mask_h[:, None], other=0.0)
            m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
            l_i = tl.zeros([BLOCK_H], tl.float32)
            acc = tl.zeros([BLOCK_H, DL], tl.float32)
            for n0 in range(pos, seg_hi, BLOCK_N):
                offs_n = n0 + tl.arange(0, BLOCK_N)
                mask_n = offs_n < seg_hi
                loc = tl.load(kv_indices + base + offs_n, mask=mask_n, other=0).to(tl.int64)
                if PAGE_SIZE == 1:
                    row = loc * stride_kv_tok
                else:
                    row = (loc // PAGE_SIZE) * stride_kv_page + (loc % PAGE_SIZE) * stride_kv_tok
                # Masked rows read as zeros: garbage (even NaN fp8 codes) in unused slots never reaches PV.
                k_lat = tl.load(KV + row[:, None] + offs_l[None, :], mask=mask_n[:, None], other=0.0)
                k_rope = tl.load(KV + row[:, None] + DL + offs_r[None, :], mask=mask_n[:, None], other=0.0)
                k_lat = k_lat.to(q_lat.dtype)  # fp8 -> bf16 in registers; the scale is folded elsewhere
                k_rope = k_rope.to(q_lat.dtype)
                s = tl.dot(q_lat, tl.trans(k_lat))
                s = tl.dot(q_rope, tl.trans(k_rope), acc=s)
                s = tl.where(mask_n[None, :], s * qk_scale, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(s, axis=1))
                alpha = tl.exp2(m_i - m_new)
                pr = tl.exp2(s - m_new[:, None])
                l_i = l_i * alpha + tl.sum(pr, axis=1)
                acc = acc * alpha[:, None] + tl.dot(pr.to(k_lat.dtype), k_lat)
                m_i = m_new
            out = acc / l_i[:, None]
            if (pos == seq_lo) & (seg_hi == seq_hi):  # whole sequence in this chunk: final output
                o_ptr = O + b.to(tl.int64) * stride_ob + offs_h[:, None] * stride_oh + offs_l[None, :]
                tl.store(o_ptr, (out * v_scale).to(O.dtype.element_ty), mask=mask_h[:, None])
            else:
                slot = (p + b).to(tl.int64)
                po_ptr = PartO + (slot * H + offs_h[:, None]) * DL + offs_l[None, :]
                tl.store(po_ptr, out, mask=mask_h[:, None])
                tl.store(PartLse + slot * H + offs_h, m_i + tl.log2(l_i), mask=mask_h)
        pos = tl.maximum(seg_hi, pos)
        b += 1


@triton.jit
def _mla_merge_kernel(
    O,
    PartO,
    PartLse,
    kv_indptr,
    v_scale,
    bs,
    num_programs,
    stride_ob,
    stride_oh,
    H: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    MIN_CHUNK: tl.constexpr,
    DL: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    dv = tl.program_id(2) * BLOCK_DV + tl.arange(0, BLOCK_DV)
    base, total, chunk = _chunk_size(kv_indptr, bs, num_programs, MIN_CHUNK)
    seq_lo = tl.load(kv_indptr + b).to(tl.int64) - base
    seq_hi = tl.load(kv_indptr + b + 1).to(tl.int64) - base
    o_ptr = O + b.to(tl.int64) * stride_ob + h * stride_oh + dv
    if seq_hi <= seq_lo:  # an empty sequence attends to nothing: zeros, never garbage
        tl.store(o_ptr, tl.zeros([BLOCK_DV], tl.float32).to(O.dtype.element_ty))
    else:
        p0 = seq_lo // chunk
        p1 = (seq_hi - 1) // chunk
        if p1 > p0:  # otherwise the partial kernel already wrote the final output
            m = tl.full([BLOCK_DV], float("-inf"), tl.float32)  # kept as a vector: same value in every lane
            den = tl.zeros([BLOCK_DV], tl.float32)
            acc = tl.zeros([BLOCK_DV], tl.float32)
            for q0 in range(p0, p1 + 1, BLOCK_P):
                offs_p = q0 + tl.arange(0, BLOCK_P)
                mask_p = offs_p <= p1
                slot = (offs_p + b).to(tl.int64)
                lse = tl.load(PartLse + slot * H + h, mask=mask_p, other=float("-inf"))
                part = tl.load(PartO + (slot[:, None] * H + h) * DL + dv[None, :], mask=mask_p[:, None], other=0.0)
                m_new = tl.maximum(m, tl.max(lse, axis=0))
                alpha = tl.exp2(m - m_new)
                w = tl.exp2(lse[:, None] - m_new[None, :])
                den = den * alpha + tl.sum(w, axis=0)
                acc = acc * alpha + tl.sum(w * part, axis=0)
                m = m_new
            tl.store(o_ptr, (acc / den * v_scale).to(O.dtype.element_ty))
