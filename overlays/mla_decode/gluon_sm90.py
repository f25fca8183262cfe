"""The MLA decode partial kernel for sm90 in Gluon (Triton's explicit-layout dialect): FlashMLA's structure
where Triton's automatic layouts could not reach it (PERF.md round 8).

Same split, workspace and outputs as `kernels._mla_partial_kernel` (the merge kernel is shared), same semantics as
its a8w8 path with PV in f16 (`reference.mla_decode_a8w8_reference(pv="f16")`): q quantized to fp8 per (sequence,
head) row with a power-of-two multiplier, an integer running max, P scaled by 2^8 into f16, V upcast to f16
(exact), fp32 accumulation. What differs is how one tile is computed, with the tokens as the wgmma M (WARPS 8:
two warpgroups, which split the 16 heads for QK and the 512 output rows for PV):
- the fp8 KV tile lands in shared memory by cp.async, STAGES - 1 tiles ahead, its row indices one more tile ahead
  (so no synchronous global load sits between two tiles);
- QK reads the fp8 tile as it landed: S^T = K q^T is an fp8 wgmma (both operands K-major in shared memory), issued
  asynchronously while the warpgroups convert the tile's 512 latent columns once to f16 in shared memory;
- PV reads that f16 copy transposed (16-bit wgmma takes an MN-major A): O^T = V^T P^T, P^T stored once per tile.
Every shared operand is read once per warpgroup (Triton's mma.sync path had each warp read all of q per tile) and
the fp8 -> f16 convert happens once per tile, not per dot operand.
A bf16 cache (bf16 q) runs the same kernel without the copy: both wgmmas read the landed bf16 tile, P in bf16
(`reference.mla_decode_reference`'s semantics, as the Triton kernel's 16-bit path).
The interpreter cannot run Gluon: correctness is the GPU tests' (test_mla_decode_gpu.py), machine code the
compile report's.
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    warpgroup_mma,
    warpgroup_mma_init,
    warpgroup_mma_wait,
)
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from speedrun.overlays.mx.gluon_helpers import cta_barrier as _cta_barrier


@gluon.jit
def _chunk_size(kv_indptr, bs, num_programs, MIN_CHUNK: gl.constexpr, SNAP: gl.constexpr, BLOCK_B: gl.constexpr,
                L1: gl.constexpr):  # fmt: skip
    """kernels._chunk_size, in Gluon (same rule, same result: the merge reads the chunk this writes)."""
    base = gl.load(kv_indptr).to(gl.int64)
    total = gl.load(kv_indptr + bs).to(gl.int64) - base
    chunk = gl.maximum((total + num_programs - 1) // num_programs, MIN_CHUNK)
    chunk = (chunk + 15) // 16 * 16
    if SNAP:
        offs = gl.arange(0, BLOCK_B, layout=L1)
        lo = gl.load(kv_indptr + offs, mask=offs < bs, other=0)
        hi = gl.load(kv_indptr + 1 + offs, mask=offs < bs, other=0)
        lmax = gl.maximum(gl.max(hi - lo, axis=0).to(gl.int64), 1)
        k = gl.maximum(lmax // chunk, 1)
        snapped = gl.where(lmax >= chunk, (lmax + k - 1) // k, (chunk + lmax - 1) // lmax * lmax)
        chunk = gl.where(snapped * 16 <= chunk * 17, snapped, chunk)
    return base, total, chunk


@gluon.jit
def _program_piece(Chunk, kv_indptr, bs, num_programs, MIN_CHUNK: gl.constexpr, SNAP: gl.constexpr,
                   BLOCK_B: gl.constexpr, L1: gl.constexpr):  # fmt: skip
    """This program's piece of the flat KV range, as kernels._mla_partial_kernel cuts it: (p, base, start, end,
    b) with b the sequence token `start` lies in; program 0 writes the chunk for the merge."""
    p = gl.program_id(0)
    base, total, chunk = _chunk_size(kv_indptr, bs, num_programs, MIN_CHUNK, SNAP, BLOCK_B, L1)
    if p == 0:
        gl.store(Chunk, chunk.to(gl.int32))
    start = p.to(gl.int64) * chunk
    end = gl.minimum(start + chunk, total)
    offs_bb = gl.arange(0, BLOCK_B, layout=L1)
    ends = gl.load(kv_indptr + 1 + offs_bb, mask=offs_bb < bs, other=0).to(gl.int64) - base
    ends = gl.where(offs_bb < bs, ends, total + 1)
    return p, base, start, end, gl.sum((ends <= start).to(gl.int32), axis=0)


@gluon.jit
def _segment_bounds(kv_indptr, base, b, end):
    """Sequence b's token range [seq_lo, seq_hi) relative to the batch start, and where the program's piece of it
    ends (seg_hi)."""
    seq_lo = gl.load(kv_indptr + b).to(gl.int64) - base
    seq_hi = gl.load(kv_indptr + b + 1).to(gl.int64) - base
    return seq_lo, seq_hi, gl.minimum(seq_hi, end)


@gluon.jit
def _locs(kv_idx, n0, seg_hi, BLOCK_N: gl.constexpr, LR: gl.constexpr):
    """KV slots of tokens [n0, n0 + BLOCK_N) in layout LR, -1 where not in the segment."""
    offs = n0 + gl.arange(0, BLOCK_N, layout=LR)
    return gl.load(kv_idx + offs, mask=offs < seg_hi, other=-1)


@gluon.jit
def _tile_locs(kv_idx, n0, seg_hi, BLOCK_N: gl.constexpr, LLAT: gl.constexpr, LROPE: gl.constexpr):
    """A tile's KV slots in the row layouts of both of its copies: loaded one tile ahead of the copies (no
    synchronous load between two tiles), and twice rather than moved between layouts (a shared-memory round
    trip with two barriers; the second load hits in cache)."""
    return (_locs(kv_idx, n0, seg_hi, BLOCK_N, gl.SliceLayout(1, LLAT)),
            _locs(kv_idx, n0, seg_hi, BLOCK_N, gl.SliceLayout(1, LROPE)))  # fmt: skip


@gluon.jit
def _rows(loc, stride_kv_page, stride_kv_tok, PAGE_SIZE: gl.constexpr):
    """Row offsets (elements, int64) of slots `loc`, and which are real tokens."""
    mask = loc >= 0
    loc = gl.maximum(loc, 0).to(gl.int64)
    if PAGE_SIZE == 1:
        row = loc * stride_kv_tok
    else:
        row = (loc // PAGE_SIZE) * stride_kv_page + (loc % PAGE_SIZE) * stride_kv_tok
    return gl.multiple_of(row, 16), mask  # rows are 16-byte aligned (api.check_inputs): 16-byte cp.async


@gluon.jit
def _issue_tile(KV, lat_s, rope_s, locs, stride_kv_page, stride_kv_tok, PAGE_SIZE: gl.constexpr, DL: gl.constexpr,
                DR: gl.constexpr, LLAT: gl.constexpr, LROPE: gl.constexpr):  # fmt: skip
    """cp.async one tile's latent [BLOCK_N, DL] and rope [BLOCK_N, DR] fp8 rows (masked rows land as zeros)."""
    loc_lat, loc_rope = locs
    row, mask = _rows(loc_lat, stride_kv_page, stride_kv_tok, PAGE_SIZE)
    c_lat = gl.arange(0, DL, layout=gl.SliceLayout(0, LLAT))
    async_copy.async_copy_global_to_shared(lat_s, KV + row[:, None] + c_lat[None, :], mask=mask[:, None])
    row, mask = _rows(loc_rope, stride_kv_page, stride_kv_tok, PAGE_SIZE)
    c_rope = gl.arange(0, DR, layout=gl.SliceLayout(0, LROPE))
    async_copy.async_copy_global_to_shared(rope_s, KV + DL + row[:, None] + c_rope[None, :], mask=mask[:, None])
    async_copy.commit_group()


@gluon.jit
def _load_q(Q, q_lat_s, q_rope_s, b, stride_qb, stride_qh, H: gl.constexpr, BLOCK_H: gl.constexpr,
            DL: gl.constexpr, DR: gl.constexpr, Q_EXP: gl.constexpr, KV16: gl.constexpr, LQ: gl.constexpr):  # fmt: skip
    """q of sequence b into shared memory in the KV's dtype: fp8 caches quantize it per head row
    (kernels._q_fp8_mul's power of two), 16-bit caches (bf16 q, bf16 KV) take it as it is. Returns the
    multipliers [BLOCK_H] (SliceLayout(1, LQ)); 1 for 16-bit caches."""
    QT: gl.constexpr = q_lat_s.dtype
    h = gl.arange(0, BLOCK_H, layout=gl.SliceLayout(1, LQ))
    row = Q + b.to(gl.int64) * stride_qb + h[:, None] * stride_qh
    mh = h[:, None] < H
    q_lat = gl.load(row + gl.arange(0, DL, layout=gl.SliceLayout(0, LQ))[None, :], mask=mh, other=0.0)
    q_rope = gl.load(row + DL + gl.arange(0, DR, layout=gl.SliceLayout(0, LQ))[None, :], mask=mh, other=0.0)
    if KV16:
        q_lat_s.store(q_lat.to(QT))
        q_rope_s.store(q_rope.to(QT))
        return gl.full([BLOCK_H], 1.0, gl.float32, gl.SliceLayout(1, LQ))
    q_lat = q_lat.to(gl.float32)
    q_rope = q_rope.to(gl.float32)
    amax = gl.maximum(gl.max(gl.abs(q_lat), axis=1), gl.max(gl.abs(q_rope), axis=1))
    e = ((amax.to(gl.int32, bitcast=True) >> 23) & 0xFF) - 127
    k = gl.minimum(gl.maximum(Q_EXP - 1 - e, -126), 127)
    q_mul = ((k + 127) << 23).to(gl.float32, bitcast=True)
    q_lat_s.store((q_lat * q_mul[:, None]).to(QT))
    q_rope_s.store((q_rope * q_mul[:, None]).to(QT))
    return q_mul


@gluon.jit
def _segment(Q, KV, O, PartO, PartLse, kv_idx, b, slot, pos, seg_hi, seq_lo, seq_hi, qk_scale, v_scale,
             stride_qb, stride_qh, stride_kv_page, stride_kv_tok, stride_ob, stride_oh,
             lat_s, rope_s, q_lat_s, q_rope_s, v16_s, p_s,
             H: gl.constexpr, BLOCK_H: gl.constexpr, BLOCK_N: gl.constexpr, PAGE_SIZE: gl.constexpr,
             DL: gl.constexpr, DR: gl.constexpr, STAGES: gl.constexpr, Q_EXP: gl.constexpr,
             WARPS: gl.constexpr, CVT_ROWS: gl.constexpr, PIPE_PV: gl.constexpr):  # fmt: skip
    """Tokens [pos, seg_hi) of sequence b through the cp.async ring: the final output, or a partial in `slot`.
    16-bit caches (KV16) skip the f16 copy: QK and PV both read the tile as it landed.
    PIPE_PV (fp8 caches; V's copy and P double-buffered): tile j's PV wgmma is left in flight and waited with tile
    j+1's QK, so it runs under the next tile's copy issue, QK and V convert instead of ending the tile."""
    KV16: gl.constexpr = KV.dtype.element_ty.primitive_bitwidth == 16
    PIPE: gl.constexpr = PIPE_PV and not KV16  # 16-bit PV reads the ring slot the next tile's copy refills
    NV: gl.constexpr = 2 if PIPE else 1  # V-copy / P buffers
    KW: gl.constexpr = 16 if KV16 else 32  # the QK wgmma's K per instruction
    LLAT: gl.constexpr = gl.BlockedLayout([1, 16], [1, 32], [WARPS, 1], [1, 0])
    LROPE: gl.constexpr = gl.BlockedLayout([1, 16], [8, 4], [WARPS, 1], [1, 0])
    LS: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, WARPS // 4],
                                                 instr_shape=[16, BLOCK_H // (WARPS // 4), KW])  # fmt: skip
    # PV: the warpgroups split the 512 output rows (each reads half of V^T, wgmma N = all 16 heads); QK above
    # splits the heads instead (M is the 64 tokens of one warpgroup).
    LO: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[WARPS, 1],
                                                 instr_shape=[16, BLOCK_H, 16])  # fmt: skip
    LQ: gl.constexpr = gl.BlockedLayout([1, 8], [2, 16], [WARPS, 1], [1, 0])
    P_SCALE: gl.constexpr = 1.0 if KV16 else 256.0  # f16 P: 2^8 keeps small P out of f16's subnormals

    # A program's earlier segment may still be in its last PV wgmma, which reads a ring slot on 16-bit caches
    # (and q for QK): nobody overwrites q or the ring before everyone is past it.
    _cta_barrier()
    q_mul = _load_q(Q, q_lat_s, q_rope_s, b, stride_qb, stride_qh, H, BLOCK_H, DL, DR, Q_EXP, KV16, LQ)
    sc = gl.convert_layout(qk_scale / q_mul, gl.SliceLayout(0, LS))
    n_tiles = ((seg_hi - pos + BLOCK_N - 1) // BLOCK_N).to(gl.int32)
    # Prologue: tiles 0 .. STAGES-2 in flight, the rows of tile STAGES-1 in registers.
    for i in gl.static_range(STAGES - 1):
        loc = _tile_locs(kv_idx, pos + i * BLOCK_N, seg_hi, BLOCK_N, LLAT, LROPE)
        _issue_tile(KV, lat_s.index(i), rope_s.index(i), loc, stride_kv_page, stride_kv_tok, PAGE_SIZE, DL, DR,
                    LLAT, LROPE)  # fmt: skip
    nloc = _tile_locs(kv_idx, pos + (STAGES - 1) * BLOCK_N, seg_hi, BLOCK_N, LLAT, LROPE)

    m_i = gl.full([BLOCK_H], float("-inf"), gl.float32, gl.SliceLayout(0, LS))
    l_acc = gl.zeros([BLOCK_N, BLOCK_H], gl.float32, LS)  # row sums kept per element, summed once at the end
    acc = gl.zeros([DL, BLOCK_H], gl.float32, LO)
    if PIPE:  # loop-carried as an in-flight accumulator
        acc = warpgroup_mma_init(acc)
    for j in range(n_tiles):
        s_idx = j % STAGES
        buf = j % NV
        async_copy.wait_group(STAGES - 2)  # this thread's copies of tile j have landed
        fence_async_shared()
        _cta_barrier()  # everyone's copies of tile j; everyone done with tile j - 1 (its slot is reused next)
        nxt = (j + STAGES - 1) % STAGES
        _issue_tile(KV, lat_s.index(nxt), rope_s.index(nxt), nloc, stride_kv_page, stride_kv_tok, PAGE_SIZE, DL, DR,
                    LLAT, LROPE)  # fmt: skip
        nloc = _tile_locs(kv_idx, pos + (j + STAGES) * BLOCK_N, seg_hi, BLOCK_N, LLAT, LROPE)
        k_lat = lat_s.index(s_idx)
        # QK (fp8 wgmma) in the background while the tile's latent columns become f16 for PV.
        s_t = gl.zeros([BLOCK_N, BLOCK_H], gl.float32, LS)
        s_t = warpgroup_mma(rope_s.index(s_idx), q_rope_s.permute((1, 0)), s_t, use_acc=False, is_async=True)
        s_t = warpgroup_mma(k_lat, q_lat_s.permute((1, 0)), s_t, is_async=True)
        if KV16:
            v_src = k_lat
        else:
            # CVT_ROWS rows at a time (registers: a whole f16 tile is 128 a thread); Triton's barrier pass puts a
            # CTA barrier between two slices' stores (it sees each as a write to the whole copy)
            v_src = v16_s.index(buf)
            for r in gl.static_range(BLOCK_N // CVT_ROWS):
                rows = k_lat.slice(r * CVT_ROWS, CVT_ROWS).load(LLAT)
                v_src.slice(r * CVT_ROWS, CVT_ROWS).store(rows.to(gl.float16))
        if PIPE:  # in order: QK(j) done means PV(j - 1) is too, so acc may be rescaled below
            s_t, acc = warpgroup_mma_wait(0, deps=[s_t, acc])
        else:
            s_t = warpgroup_mma_wait(0, deps=[s_t])
        # Online softmax over the tokens (axis 0), integer max as kernels._online_softmax's INT_MAX.
        offs_n = pos + j * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, LS))
        s_t = gl.where((offs_n < seg_hi)[:, None], s_t * sc[None, :], float("-inf"))
        m_new = gl.maximum(m_i, gl.ceil(gl.max(s_t, axis=0)))
        alpha = gl.exp2(m_i - m_new)
        p_t = gl.exp2(s_t - m_new[None, :])
        l_acc = l_acc * alpha[None, :] + p_t
        m_i = m_new
        p_b = p_s.index(buf)
        p_b.store((p_t * P_SCALE).to(p_s.dtype))
        fence_async_shared()
        _cta_barrier()  # every warp's V and P rows are in shared memory before the wgmma reads them
        acc = acc * gl.convert_layout(alpha, gl.SliceLayout(0, LO))[None, :]
        acc = warpgroup_mma(v_src.permute((1, 0)), p_b, acc, is_async=True)
        if not PIPE:
            acc = warpgroup_mma_wait(0, deps=[acc])
    if PIPE:
        acc = warpgroup_mma_wait(0, deps=[acc])
    async_copy.wait_group(0)  # the ring's look-ahead copies (past the segment: masked) are done before reuse
    l_i = gl.sum(l_acc, axis=0)

    # acc^T [DL, heads] / l / P_SCALE -> the final output or the partial.
    # Coalesced stores through a shared-memory re-layout (32 KB of scratch); PIPE's double buffers leave no room for
    # it (230 KB > 227 KB), so it stores from the accumulator's own layout (once per segment)
    LOUT: gl.constexpr = LO if PIPE else gl.BlockedLayout([4, 1], [32, 1], [1, WARPS], [0, 1])
    l_o = gl.convert_layout(l_i * P_SCALE, gl.SliceLayout(0, LO))
    out = gl.convert_layout(acc / l_o[None, :], LOUT)
    _store_segment(O, PartO, PartLse, out, m_i, l_i, b, slot, (pos == seq_lo) & (seg_hi == seq_hi), v_scale,
                   stride_ob, stride_oh, H, BLOCK_H, DL, LOUT)  # fmt: skip


@gluon.jit
def _store_segment(O, PartO, PartLse, out, m_i, l_i, b, slot, final, v_scale, stride_ob, stride_oh, H: gl.constexpr,
                   BLOCK_H: gl.constexpr, DL: gl.constexpr, LOUT: gl.constexpr):  # fmt: skip
    """A segment's result out^T [DL, heads] (layout LOUT, already divided by its row sums): sequence b's output
    (scaled by v_scale) when the segment is the whole sequence, else partial `slot` and its log2-sum-exp."""
    d = gl.arange(0, DL, layout=gl.SliceLayout(1, LOUT))
    h = gl.arange(0, BLOCK_H, layout=gl.SliceLayout(0, LOUT))
    mh = (h < H)[None, :]
    if final:
        o_ptr = O + b.to(gl.int64) * stride_ob + h[None, :] * stride_oh + d[:, None]
        gl.store(o_ptr, (out * v_scale).to(O.dtype.element_ty), mask=mh)
    else:
        gl.store(PartO + (slot * H + h[None, :]) * DL + d[:, None], out, mask=mh)
        hl = gl.arange(0, BLOCK_H, layout=m_i.type.layout)
        gl.store(PartLse + slot * H + hl, m_i + gl.log2(l_i), mask=hl < H)


@gluon.jit
def mla_partial_sm90(
    Q,
    KV,
    O,
    PartO,
    PartLse,
    Chunk,
    kv_indptr,
    kv_indices,
    qk_scale,
    v_scale,
    bs,
    num_programs,
    stride_qb,
    stride_qh,
    stride_kv_page,
    stride_kv_tok,
    stride_ob,
    stride_oh,
    H: gl.constexpr,
    BLOCK_H: gl.constexpr,
    BLOCK_N: gl.constexpr,
    BLOCK_B: gl.constexpr,
    MIN_CHUNK: gl.constexpr,
    PAGE_SIZE: gl.constexpr,
    DL: gl.constexpr,
    DR: gl.constexpr,
    SNAP: gl.constexpr = True,
    STAGES: gl.constexpr = 3,
    Q_EXP: gl.constexpr = 8,
    WARPS: gl.constexpr = 8,  # 4: one warpgroup; 8: two (QK: 8 heads each; PV: half the output rows each)
    CVT_ROWS: gl.constexpr = 32,  # fp8 caches: V's f16 copy in slices of this many tokens (a8w8.cvt_rows)
    PIPE_PV: gl.constexpr = False,  # fp8 caches: PV left in flight into the next tile (a8w8.pipe_pv; _segment)
    PDL: gl.constexpr = False,  # launched as a programmatic dependent (overlays/pdl.py): wait, then trigger the merge
):
    """kernels._mla_partial_kernel's contract (grid: programs; heads <= BLOCK_H = 16 in one program) for fp8 e4m3
    KV (a8w8) and bf16 KV with bf16 q."""
    L1: gl.constexpr = gl.BlockedLayout([1], [32], [WARPS], [0])
    KT: gl.constexpr = KV.dtype.element_ty  # fp8 e4m3 (a8w8) or bf16 (16-bit cache)
    KV16: gl.constexpr = KT.primitive_bitwidth == 16
    PT: gl.constexpr = KT if KV16 else gl.float16  # P's dtype, and V's for PV
    lat_l: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, DL], KT)
    rope_l: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, DR], KT)
    lat_s = gl.allocate_shared_memory(KT, [STAGES, BLOCK_N, DL], lat_l)
    rope_s = gl.allocate_shared_memory(KT, [STAGES, BLOCK_N, DR], rope_l)
    q_lat_s = gl.allocate_shared_memory(KT, [BLOCK_H, DL], gl.NVMMASharedLayout.get_default_for([BLOCK_H, DL], KT))
    q_rope_s = gl.allocate_shared_memory(KT, [BLOCK_H, DR], gl.NVMMASharedLayout.get_default_for([BLOCK_H, DR], KT))
    NV: gl.constexpr = 2 if PIPE_PV and not KV16 else 1  # V-copy / P buffers (_segment's PIPE)
    if KV16:
        v16_s = lat_s  # not used: PV reads the landed tile itself
    else:
        v16_s = gl.allocate_shared_memory(gl.float16, [NV, BLOCK_N, DL],
                                          gl.NVMMASharedLayout.get_default_for([BLOCK_N, DL], gl.float16))  # fmt: skip
    p_s = gl.allocate_shared_memory(
        PT, [NV, BLOCK_N, BLOCK_H], gl.NVMMASharedLayout.get_default_for([BLOCK_N, BLOCK_H], PT)
    )

    if PDL:  # q and the cache come from the kernels before
        gdc_wait()
        gdc_launch_dependents()
    p, base, start, end, b = _program_piece(Chunk, kv_indptr, bs, num_programs, MIN_CHUNK, SNAP, BLOCK_B, L1)
    kv_idx = kv_indices + base
    pos = start
    while pos < end:
        seq_lo, seq_hi, seg_hi = _segment_bounds(kv_indptr, base, b, end)
        if seg_hi > pos:
            _segment(Q, KV, O, PartO, PartLse, kv_idx, b, (p + b).to(gl.int64), pos, seg_hi, seq_lo, seq_hi,
                     qk_scale, v_scale, stride_qb, stride_qh, stride_kv_page, stride_kv_tok, stride_ob, stride_oh,
                     lat_s, rope_s, q_lat_s, q_rope_s, v16_s, p_s, H, BLOCK_H, BLOCK_N, PAGE_SIZE, DL, DR, STAGES,
                     Q_EXP, WARPS, CVT_ROWS, PIPE_PV)  # fmt: skip
        pos = gl.maximum(seg_hi, pos)
        b += 1
