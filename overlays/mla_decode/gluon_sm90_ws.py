"""The MLA decode partial kernel for sm90, warp-specialized (Gluon): gluon_sm90.py's a8w8 tile, with the tile's
loads and its V convert taken off the warps that run the MMAs and the softmax (PERF.md round 11).

Same split, workspace, outputs and semantics as `gluon_sm90.mla_partial_sm90` on fp8 e4m3 caches with `pipe_pv`
(`reference.mla_decode_a8w8_reference(pv="f16")`; PV_FP8: pv="fp8"): q quantized to fp8 per (sequence, head) row
with a power-of-two multiplier, an integer running max, P scaled by 2^8 into f16, V upcast to f16 (exact), fp32
accumulation. Three partitions of one CTA hand tiles over mbarriers instead of CTA barriers:
- loader (a warpgroup): cp.async of each 64-token fp8 tile into a STAGES-deep ring, every thread's copies completing
  on the slot's `kv_full` barrier (cp.async.mbarrier.arrive.noinc); a tile's KV slots are loaded a tile ahead;
- converter (a warpgroup): each landed tile's V as PV reads it into one of NV buffers (`v_full` when stored);
- MMA (the default partition, WARPS 8 = two warpgroups): S^T = K q^T as fp8 wgmma from the landed slot (the
  warpgroups split the heads), the online softmax over the tokens, P^T to shared memory, O^T += V^T P^T as f16
  wgmma (the warpgroups split the 512 output rows), left in flight until the next tile's QK is waited; `done` when
  a tile's QK has retired (and with it the PV before).
All three walk the program's segments the same way and count the same global tile index t: ring slot t % STAGES,
V buffer t % NV, P buffer t % 2. A slot is refilled once `done` and the converter's read of its tile are signalled;
a V buffer is rewritten once the PV that read it has retired. fp8 caches only, heads <= 16 in one program
(api.partial_kernel checks). The interpreter cannot run Gluon: correctness is the GPU tests' (test_mla_decode_gpu.py),
machine code the compile report's.
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    warpgroup_mma,
    warpgroup_mma_init,
    warpgroup_mma_wait,
)
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from speedrun.overlays.mla_decode.gluon_sm90 import (
    _cta_barrier,
    _load_q,
    _locs,
    _program_piece,
    _rows,
    _segment_bounds,
    _store_segment,
)


@gluon.jit
def _seg_hi(kv_indptr, base, b, end, bs):
    """Where the program's piece of sequence b ends (b clamped into the batch: past the walk's end it is unread)."""
    return gl.minimum(gl.load(kv_indptr + gl.minimum(b, bs - 1) + 1).to(gl.int64) - base, end)


@gluon.jit
def _advance(kv_indptr, base, b, n0, seg_hi, end, bs, BLOCK_N: gl.constexpr):
    """The tile after the one at n0 of sequence b in the program's walk (empty sequences skipped): its sequence,
    start and segment end; start >= end once the walk is over."""
    n1 = n0 + BLOCK_N
    if n1 >= seg_hi:
        n1 = seg_hi
        b += 1
        seg_hi = _seg_hi(kv_indptr, base, b, end, bs)
        while (seg_hi <= n1) & (n1 < end):
            b += 1
            seg_hi = _seg_hi(kv_indptr, base, b, end, bs)
    return b, n1, seg_hi


@gluon.jit
def _loader(KV, kv_idx, kv_indptr, base, start, end, b0, bs, stride_kv_page, stride_kv_tok, lat_s, rope_s, kv_full,
            done, read, BLOCK_N: gl.constexpr, PAGE_SIZE: gl.constexpr, DL: gl.constexpr, DR: gl.constexpr,
            STAGES: gl.constexpr, LOAD_WARPS: gl.constexpr):  # fmt: skip
    """Every tile of the program's chunk into the ring, in order, walked as one stream of tiles so that each tile's
    KV slots are loaded a tile ahead, before the wait for its ring slot (ncu, round 11: loading them after the wait
    left the MMA warps waiting on `kv_full` ~28% of their time). Rows past the segment land as zeros."""
    LLAT: gl.constexpr = gl.BlockedLayout([1, 16], [1, 32], [LOAD_WARPS, 1], [1, 0])
    LROPE: gl.constexpr = gl.BlockedLayout([1, 16], [8, 4], [LOAD_WARPS, 1], [1, 0])
    c_lat = gl.arange(0, DL, layout=gl.SliceLayout(0, LLAT))
    c_rope = gl.arange(0, DR, layout=gl.SliceLayout(0, LROPE))
    b = b0
    n0 = start
    seg_hi = _seg_hi(kv_indptr, base, b, end, bs)
    loc = _locs(kv_idx, n0, seg_hi, BLOCK_N, gl.SliceLayout(1, LLAT))
    loc_r = _locs(kv_idx, n0, seg_hi, BLOCK_N, gl.SliceLayout(1, LROPE))
    t = 0
    while n0 < end:
        b, n1, seg_hi = _advance(kv_indptr, base, b, n0, seg_hi, end, bs, BLOCK_N)
        nloc = _locs(kv_idx, n1, seg_hi, BLOCK_N, gl.SliceLayout(1, LLAT))  # all -1 past the walk's end
        nloc_r = _locs(kv_idx, n1, seg_hi, BLOCK_N, gl.SliceLayout(1, LROPE))
        s = t % STAGES
        # slot s held tile t - STAGES: its QK is done and the converter has read it (`read`, per slot)
        mbarrier.wait(done.index(s), ((t - STAGES) // STAGES) & 1, pred=t >= STAGES)
        mbarrier.wait(read.index(s), ((t - STAGES) // STAGES) & 1, pred=t >= STAGES)
        row, mask = _rows(loc, stride_kv_page, stride_kv_tok, PAGE_SIZE)
        async_copy.async_copy_global_to_shared(lat_s.index(s), KV + row[:, None] + c_lat[None, :], mask=mask[:, None])
        row, mask = _rows(loc_r, stride_kv_page, stride_kv_tok, PAGE_SIZE)
        async_copy.async_copy_global_to_shared(rope_s.index(s), KV + DL + row[:, None] + c_rope[None, :],
                                               mask=mask[:, None])  # fmt: skip
        async_copy.mbarrier_arrive(kv_full.index(s), increment_count=False)
        n0 = n1
        loc = nloc
        loc_r = nloc_r
        t += 1


@gluon.jit
def _convert_f16(lat, v, BLOCK_N: gl.constexpr, CVT_WARPS: gl.constexpr, CVT_ROWS: gl.constexpr):
    """V [BLOCK_N, 512] fp8 -> f16 (exact: e4m3 is a subset of f16), CVT_ROWS tokens at a time."""
    LCV: gl.constexpr = gl.BlockedLayout([1, 16], [1, 32], [CVT_WARPS, 1], [1, 0])
    for r in gl.static_range(BLOCK_N // CVT_ROWS):
        rows = lat.slice(r * CVT_ROWS, CVT_ROWS).load(LCV)
        v.slice(r * CVT_ROWS, CVT_ROWS).store(rows.to(gl.float16))


@gluon.jit
def _transpose_fp8(lat, v_t, BLOCK_N: gl.constexpr, DL: gl.constexpr, CVT_WARPS: gl.constexpr):
    """V [BLOCK_N, 512] fp8 -> V^T [512, BLOCK_N] fp8 (tokens contiguous: the K-major A operand fp8 wgmma needs),
    128 latent columns at a time, in 8 x 8 byte blocks a thread (8-byte loads and stores, the transpose in
    registers)."""
    CVT_D: gl.constexpr = 32 * CVT_WARPS
    LT: gl.constexpr = gl.BlockedLayout([8, 8], [8, 4], [1, CVT_WARPS], [1, 0])
    for c in gl.static_range(DL // CVT_D):
        x = lat.slice(c * CVT_D, CVT_D, dim=1).load(LT)
        v_t.slice(c * CVT_D, CVT_D).store(gl.permute(x, (1, 0)))


@gluon.jit
def _converter(kv_indptr, base, start, end, b0, lat_s, v_s, kv_full, done, v_full, read, BLOCK_N: gl.constexpr,
               DL: gl.constexpr, STAGES: gl.constexpr, NV: gl.constexpr, CVT_WARPS: gl.constexpr,
               CVT_ROWS: gl.constexpr, PV_FP8: gl.constexpr):  # fmt: skip
    """Each landed tile's V into buffer t % NV, as PV reads it: f16, or (PV_FP8) fp8 transposed. With fewer V
    buffers than ring slots it also signals, per slot, that it has read the tile (`read`); with as many, `v_full`
    of the same index says so."""
    t = 0
    pos = start
    b = b0
    while pos < end:
        seq_lo, seq_hi, seg_hi = _segment_bounds(kv_indptr, base, b, end)
        for _ in range(pos, seg_hi, BLOCK_N):
            s = t % STAGES
            v = t % NV
            mbarrier.wait(kv_full.index(s), (t // STAGES) & 1)
            # V buffer v held tile t - NV: `done` of tile t - NV + 1 means its PV has retired
            u = t - NV + 1
            mbarrier.wait(done.index(u % STAGES), (u // STAGES) & 1, pred=t >= NV)
            if PV_FP8:
                _transpose_fp8(lat_s.index(s), v_s.index(v), BLOCK_N, DL, CVT_WARPS)
            else:
                _convert_f16(lat_s.index(s), v_s.index(v), BLOCK_N, CVT_WARPS, CVT_ROWS)
            fence_async_shared()  # the stores are read by wgmma (the async proxy)
            mbarrier.arrive(v_full.index(v))  # Triton puts a partition barrier before an arrive
            if NV != STAGES:
                mbarrier.arrive(read.index(s))
            t += 1
        pos = gl.maximum(seg_hi, pos)
        b += 1


@gluon.jit
def _store_p(p_b, p_t, PV_FP8: gl.constexpr, P_SCALE: gl.constexpr):
    """P * P_SCALE into its buffer as PV reads it (PV_FP8: P^T [heads, tokens], the fp8 wgmma's K-major B operand);
    returns the buffer as the PV wgmma's B operand."""
    if PV_FP8:
        p_b.store(gl.permute((p_t * P_SCALE).to(p_b.dtype), (1, 0)))
        return p_b.permute((1, 0))
    p_b.store((p_t * P_SCALE).to(p_b.dtype))
    return p_b


@gluon.jit
def _rescaled_p(s_t, l_acc, m_i, m_new, p_b, PV_FP8: gl.constexpr, P_SCALE: gl.constexpr):
    """The online softmax's step to running max m_new: alpha (the old terms' factor), the row sums rescaled plus this
    tile's P, and P stored for PV; returns after the barrier that puts both warpgroups' P in shared memory."""
    alpha = gl.exp2(m_i - m_new)
    p_t = gl.exp2(s_t - m_new[None, :])
    l_acc = l_acc * alpha[None, :] + p_t
    p_out = _store_p(p_b, p_t, PV_FP8, P_SCALE)
    fence_async_shared()
    _cta_barrier()  # both warpgroups' P rows are in shared memory before either PV reads them
    return alpha, l_acc, p_out


@gluon.jit
def _lazy_softmax(s_t, acc, l_acc, m_i, m_all, p_b, pm, LO: gl.constexpr, PV_FP8: gl.constexpr,
                  P_SCALE: gl.constexpr):  # fmt: skip
    """A tile's P with the running max as it stands, which moves only when the tile's scores would overflow P's
    type (a8w8.lazy_max). The per-tile max over 64 tokens crosses the 4 token warps of a warpgroup: here each warp
    reduces its own 16 tokens and leaves the result in `pm` [4, heads] beside P, and the barrier that publishes P
    publishes them too, so a tile costs no reduction barriers; every thread then reads all partial maxima and takes
    the same branch. Only when some head's max exceeds the running max by more than GROW (P * P_SCALE <= 2^15 in f16;
    e4m3 holds 448, so PV_FP8 moves it as the eager kernel does) are P, the row sums and the accumulator rescaled
    and P stored again. The running maxima stay integers: every rescale is a power of two."""
    BN: gl.constexpr = s_t.shape[0]
    BH: gl.constexpr = s_t.shape[1]
    LF: gl.constexpr = m_all.type.layout.parent
    GROW: gl.constexpr = 0.0 if PV_FP8 else 7.0
    pm.store(gl.max(s_t.reshape([4, BN // 4, BH]), axis=1))  # dim 0 is the token warp: no cross-warp step
    p_t = gl.exp2(s_t - m_i[None, :])
    p_out = _store_p(p_b, p_t, PV_FP8, P_SCALE)
    fence_async_shared()
    _cta_barrier()  # both warpgroups' P and partial maxima are in shared memory
    need = gl.ceil(gl.max(pm.load(LF), axis=0))  # every head's tile max, whole in every thread
    if gl.max(need - m_all, axis=0) > GROW:
        m_all = gl.maximum(m_all, need)
        m_new = gl.convert_layout(m_all, m_i.type.layout)
        alpha, l_acc, p_out = _rescaled_p(s_t, l_acc, m_i, m_new, p_b, PV_FP8, P_SCALE)
        m_i = m_new
        acc = acc * gl.convert_layout(alpha, gl.SliceLayout(0, LO))[None, :]
    else:
        l_acc = l_acc + p_t
    return acc, l_acc, m_i, m_all, p_out


@gluon.jit
def _mma(Q, O, PartO, PartLse, kv_indptr, base, start, end, b0, p, qk_scale, v_scale, stride_qb, stride_qh,
         stride_ob, stride_oh, lat_s, rope_s, q_lat_s, q_rope_s, v_s, p_s, pm_s, kv_full, done, v_full, H: gl.constexpr,
         BLOCK_H: gl.constexpr, BLOCK_N: gl.constexpr, DL: gl.constexpr, DR: gl.constexpr, Q_EXP: gl.constexpr,
         WARPS: gl.constexpr, STAGES: gl.constexpr, NV: gl.constexpr, PV_FP8: gl.constexpr,
         PV_HEADS: gl.constexpr, LAZY_MAX: gl.constexpr):  # fmt: skip
    """QK, softmax and PV of every tile (gluon_sm90._segment's PIPE_PV tile, fed by the other partitions), and
    each segment's output: the final one, or a partial in slot p + b."""
    LS: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, WARPS // 4],
                                                 instr_shape=[16, BLOCK_H // (WARPS // 4), 32])  # fmt: skip
    # PV: the warpgroups split the 512 output rows (each reads half of V), or (PV_HEADS) the heads as QK does, so
    # alpha's layout is the accumulator's (no re-layout) and each warpgroup reads only its own P
    G: gl.constexpr = WARPS // 4 if PV_HEADS else 1
    LO: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[WARPS // G, G],
                                                 instr_shape=[16, BLOCK_H // G, 32 if PV_FP8 else 16])  # fmt: skip
    LQ: gl.constexpr = gl.BlockedLayout([1, 8], [2, 16], [WARPS, 1], [1, 0])
    P_SCALE: gl.constexpr = 256.0  # P in [0, 1] scaled by 2^8: small P kept out of f16's / e4m3's subnormals
    # LAZY_MAX: the 4 token warps' partial maxima of every head, held whole by every thread
    LF: gl.constexpr = gl.BlockedLayout([4, BLOCK_H], [32, 1], [WARPS, 1], [1, 0])
    t = 0
    pos = start
    b = b0
    while pos < end:
        seq_lo, seq_hi, seg_hi = _segment_bounds(kv_indptr, base, b, end)
        if seg_hi > pos:
            _cta_barrier()  # every warp is past the last segment's QK before q is overwritten
            q_mul = _load_q(Q, q_lat_s, q_rope_s, b, stride_qb, stride_qh, H, BLOCK_H, DL, DR, Q_EXP, False, LQ)
            fence_async_shared()
            _cta_barrier()
            sc = gl.convert_layout(qk_scale / q_mul, gl.SliceLayout(0, LS))
            m_i = gl.full([BLOCK_H], float("-inf"), gl.float32, gl.SliceLayout(0, LS))
            m_all = gl.full([BLOCK_H], float("-inf"), gl.float32, gl.SliceLayout(0, LF))  # LAZY_MAX: m_i, every head
            l_acc = gl.zeros([BLOCK_N, BLOCK_H], gl.float32, LS)  # row sums kept per element, summed at the end
            acc = warpgroup_mma_init(gl.zeros([DL, BLOCK_H], gl.float32, LO))
            for n0 in range(pos, seg_hi, BLOCK_N):
                s = t % STAGES
                mbarrier.wait(kv_full.index(s), (t // STAGES) & 1)
                s_t = gl.zeros([BLOCK_N, BLOCK_H], gl.float32, LS)
                s_t = warpgroup_mma(rope_s.index(s), q_rope_s.permute((1, 0)), s_t, use_acc=False, is_async=True)
                s_t = warpgroup_mma(lat_s.index(s), q_lat_s.permute((1, 0)), s_t, is_async=True)
                # wgmma groups retire in order: QK(t) done means PV(t - 1) is too (slot and V buffer free)
                s_t, acc = warpgroup_mma_wait(0, deps=[s_t, acc])
                mbarrier.arrive(done.index(s))
                offs_n = n0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, LS))
                s_t = gl.where((offs_n < seg_hi)[:, None], s_t * sc[None, :], float("-inf"))
                p_b = p_s.index(t % 2)
                if LAZY_MAX:
                    acc, l_acc, m_i, m_all, p_b = _lazy_softmax(s_t, acc, l_acc, m_i, m_all, p_b, pm_s.index(t % 2),
                                                                LO, PV_FP8, P_SCALE)  # fmt: skip
                else:
                    m_new = gl.maximum(m_i, gl.ceil(gl.max(s_t, axis=0)))
                    alpha, l_acc, p_b = _rescaled_p(s_t, l_acc, m_i, m_new, p_b, PV_FP8, P_SCALE)
                    m_i = m_new
                if PV_FP8:
                    v_t = v_s.index(t % NV)
                else:
                    v_t = v_s.index(t % NV).permute((1, 0))
                mbarrier.wait(v_full.index(t % NV), (t // NV) & 1)
                if not LAZY_MAX:
                    acc = acc * gl.convert_layout(alpha, gl.SliceLayout(0, LO))[None, :]
                acc = warpgroup_mma(v_t, p_b, acc, is_async=True)
                t += 1
            acc = warpgroup_mma_wait(0, deps=[acc])
            l_i = gl.sum(l_acc, axis=0)
            # acc^T [DL, heads] / l / P_SCALE, stored from the accumulator's layout (no shared memory left for a
            # re-layout), once per segment
            l_o = gl.convert_layout(l_i * P_SCALE, gl.SliceLayout(0, LO))
            _store_segment(
                O,
                PartO,
                PartLse,
                acc / l_o[None, :],
                m_i,
                l_i,
                b,
                (p + b).to(gl.int64),
                (pos == seq_lo) & (seg_hi == seq_hi),
                v_scale,
                stride_ob,
                stride_oh,
                H,
                BLOCK_H,
                DL,
                LO,
            )
        pos = gl.maximum(seg_hi, pos)
        b += 1


@gluon.jit
def mla_partial_sm90_ws(
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
    Q_EXP: gl.constexpr = 8,
    WARPS: gl.constexpr = 8,  # the MMA partition: two warpgroups (QK: 8 heads each; PV: half the output rows each)
    CVT_ROWS: gl.constexpr = 16,  # f16 V: the converter's slice (tokens): 16 -> 88 registers a thread, 32 -> 120
    STAGES: gl.constexpr = 2,  # ring slots (api.GLUON_WS_SMEM: what fits with NV V buffers)
    NV: gl.constexpr = 2,  # V buffers: 2 (or STAGES) lets the converter fill one while PV reads the other; 1 frees
    # 64 KB (f16) for ring slots, at the price of converting a tile only once the PV before it has retired
    PV_FP8: gl.constexpr = False,  # PV as fp8 wgmma: V^T in fp8 (transposed by the converter), P in e4m3
    PV_HEADS: gl.constexpr = False,  # PV split by heads between the MMA warpgroups (a8w8.pv_split heads), not rows
    PDL: gl.constexpr = False,  # launched as a programmatic dependent (overlays/pdl.py): wait, then trigger the merge
    LAZY_MAX: gl.constexpr = False,  # a8w8.lazy_max: the running max moves only when P would overflow (_lazy_softmax)
):
    """kernels._mla_partial_kernel's contract (grid: programs; heads <= BLOCK_H = 16 in one program) for fp8 e4m3
    KV computed a8w8 (PV in f16, or in fp8 with PV_FP8). Launch with num_warps = WARPS: the workers' warps come on
    top."""
    L1: gl.constexpr = gl.BlockedLayout([1], [32], [WARPS], [0])
    KT: gl.constexpr = KV.dtype.element_ty
    # One warpgroup each for the loader and the converter (setmaxnreg works per warpgroup). Registers a thread: the
    # converter holds a slice as fp8 and f16 (CVT_ROWS x 512 x 3 bytes over its threads) or one 64 x 128 fp8 block,
    # the loader only pointers; the MMA warps get the rest (160 at 88 + 104)
    LOAD_WARPS: gl.constexpr = 4
    CVT_WARPS: gl.constexpr = 4
    LOAD_REGS: gl.constexpr = 104
    CVT_REGS: gl.constexpr = 80 if PV_FP8 else 56 + 2 * CVT_ROWS
    # Shared memory: STAGES 36 KB fp8 ring slots, NV V buffers (64 KB f16, or 32 KB fp8 V^T), 9 KB of q, 2 P buffers:
    # 2 + 2 f16 = 213 KB of the H100's 227; 3 + 1 f16 = 185 KB; 4 + 1 = 221 KB; fp8 V 3 + 3 = 215 KB
    VT: gl.constexpr = KT if PV_FP8 else gl.float16  # V's and P's dtype for PV
    V_SHAPE: gl.constexpr = [DL, BLOCK_N] if PV_FP8 else [BLOCK_N, DL]  # fp8: V^T (tokens contiguous)
    P_SHAPE: gl.constexpr = [BLOCK_H, BLOCK_N] if PV_FP8 else [BLOCK_N, BLOCK_H]
    lat_s = gl.allocate_shared_memory(
        KT, [STAGES, BLOCK_N, DL], gl.NVMMASharedLayout.get_default_for([BLOCK_N, DL], KT)
    )
    rope_s = gl.allocate_shared_memory(
        KT, [STAGES, BLOCK_N, DR], gl.NVMMASharedLayout.get_default_for([BLOCK_N, DR], KT)
    )
    q_lat_s = gl.allocate_shared_memory(KT, [BLOCK_H, DL], gl.NVMMASharedLayout.get_default_for([BLOCK_H, DL], KT))
    q_rope_s = gl.allocate_shared_memory(KT, [BLOCK_H, DR], gl.NVMMASharedLayout.get_default_for([BLOCK_H, DR], KT))
    v_s = gl.allocate_shared_memory(VT, [NV] + V_SHAPE, gl.NVMMASharedLayout.get_default_for(V_SHAPE, VT))
    p_s = gl.allocate_shared_memory(VT, [2] + P_SHAPE, gl.NVMMASharedLayout.get_default_for(P_SHAPE, VT))
    if LAZY_MAX:  # each token warp's partial maxima of a tile, beside its P (double-buffered as P); 512 B
        pm_s = gl.allocate_shared_memory(gl.float32, [2, 4, BLOCK_H], gl.SwizzledSharedLayout(1, 1, 1, [1, 0]))
    else:
        pm_s = p_s  # unused
    kv_full = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    done = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_full = gl.allocate_shared_memory(gl.int64, [NV, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(kv_full.index(i), count=LOAD_WARPS * 32)  # every loader thread's copies (noinc arrives)
        mbarrier.init(done.index(i), count=1)
    for i in gl.static_range(NV):
        mbarrier.init(v_full.index(i), count=1)
    if NV == STAGES:  # v_full of a slot's index says its tile was read
        read = v_full
    else:
        read = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(read.index(i), count=1)

    if PDL:  # q and the cache come from the kernels before
        gdc_wait()
        gdc_launch_dependents()
    p, base, start, end, b0 = _program_piece(Chunk, kv_indptr, bs, num_programs, MIN_CHUNK, SNAP, BLOCK_B, L1)
    kv_idx = kv_indices + base
    gl.warp_specialize(
        [
            (_mma, (Q, O, PartO, PartLse, kv_indptr, base, start, end, b0, p, qk_scale, v_scale, stride_qb, stride_qh,
                    stride_ob, stride_oh, lat_s, rope_s, q_lat_s, q_rope_s, v_s, p_s, pm_s, kv_full, done, v_full, H,
                    BLOCK_H, BLOCK_N, DL, DR, Q_EXP, WARPS, STAGES, NV, PV_FP8, PV_HEADS, LAZY_MAX)),
            (_converter, (kv_indptr, base, start, end, b0, lat_s, v_s, kv_full, done, v_full, read, BLOCK_N, DL,
                          STAGES, NV, CVT_WARPS, CVT_ROWS, PV_FP8)),
            (_loader, (KV, kv_idx, kv_indptr, base, start, end, b0, bs, stride_kv_page, stride_kv_tok, lat_s,
                       rope_s, kv_full, done, read, BLOCK_N, PAGE_SIZE, DL, DR, STAGES, LOAD_WARPS)),
        ],
        [CVT_WARPS, LOAD_WARPS],
        [CVT_REGS, LOAD_REGS],
    )  # fmt: skip
