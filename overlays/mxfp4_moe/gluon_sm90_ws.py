"""The MoE's grouped GEMMs for sm90, warp-specialized and persistent (Gluon): kernels.moe_gemm1_kernel's and
moe_gemm2_kernel's results (swapped tiles, swz128 experts, bf16 activations: w4a16, or w4a4 with a_qdq) with the
loads, the weight decode and the MMAs in partitions of their own (mxfp4_gemm/gluon_sm90_ws.py's design).

Why (PERF.md round 12): a decode step's MoE is thousands of small tiles (DeepSeek's TP8 shard at M 32: ~200 active
expert blocks x 4 GEMM1 tiles of 56 K steps, then x 112 GEMM2 tiles of 2 K steps), and each Triton program pays
its own pipeline fill. Here a grid of at most one CTA an SM walks a stream of items (expert block, N tile, K
split), and its partitions walk it the same way, counting one tile index t over all of them:
- loader (a warpgroup): per K step of an item, cp.async of the weight rows' codes and scale words (GEMM1: the gate
  and the up rows of the N tile) and the item's activation rows (GEMM1: x[slot // TOPK]; GEMM2: h[slot]) into a
  STAGES-deep ring; the next item's loads follow the last step of the one before without a gap;
- W decoder (a warpgroup, mx.gluon_helpers.swz_decoder): each landed step's words to bf16, as the MMA's A operand;
- MMA (the default partition, one warpgroup): acc^T [BN, BM] += W . A^T as bf16 wgmma, the activation tile read
  straight from the ring slot (it is bf16 on the grid already); at an item's last step its epilogue, while the
  workers go on with the next item: GEMM1 bias, bf16 rounding, the activation, with a_qdq the re-quantization of h
  to the MXFP4 grid (or, split over K, fp32 partials and the last split's sum, as the Triton kernel); GEMM2 bias,
  the routing weight and y[slot]'s row.
Items are (block, N tile, split) in that order; CTA c takes items c, c + grid, ...; blocks past the sort's padded
length (read on the device: CUDA-graph safe) are not walked. K % 128 need not be 0: activation columns past K land
as zeros (the experts' codes there are zero padding). The interpreter cannot run Gluon: correctness is the GPU
tests' (test_mxfp4_moe_gpu.py), machine code the compile report's.
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, warpgroup_mma, warpgroup_mma_wait
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from speedrun.overlays.mx.gluon_helpers import (
    BK,
    NB,
    PART_WARPS,
    WORDS_LAYOUT,
    cta_barrier,
    hand_off_barriers,
    qdq_rows,
    swz_decoder,
    swz_row_scales,
    swz_row_words,
    weight_ring,
)

DEC_REGS: gl.constexpr = gl.constexpr(152)  # the decoder holds a 128-row step: 16 words + 64 bf16 pairs a thread
LOAD_REGS: gl.constexpr = gl.constexpr(96)


@gluon.jit
def _item(i, n_tiles, split):
    """Item i -> (expert block, N tile, K split)."""
    per_block = n_tiles * split
    return i // per_block, (i // split) % n_tiles, i % split


@gluon.jit
def _k_steps(ks, split, KC):
    """The K steps (128-code chunks) [lo, hi) of split ks of KC; empty (hi == lo) for a split past KC (KC 5 in 4
    splits: 2, 2, 1, 0), so the decoder's step count, a sum of hi - lo, never goes down."""
    per = (KC + split - 1) // split
    lo = ks * per
    return lo, gl.maximum(gl.minimum(lo + per, KC), lo)


@gluon.jit
def _loader(A, W32, WS32, sorted_ptr, expert_ids_ptr, npad_ptr, NUM, N, K, stride_am, stride_we, row_words,
            stride_wse, row_scale_words, n_tiles, split, codes_s, scales_s, a_s, ready, free, GEMM1: gl.constexpr,
            TOPK: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, ROWG: gl.constexpr,
            STAGES: gl.constexpr):  # fmt: skip
    """Every K step of the CTA's items into the ring (rows past the sort's slots, past N or K land as zeros)."""
    RW: gl.constexpr = 2 * BLOCK_N if GEMM1 else BLOCK_N  # weight rows a step: GEMM1's gate then up rows
    LS: gl.constexpr = gl.BlockedLayout([1], [32], [PART_WARPS], [0])
    LA: gl.constexpr = gl.BlockedLayout([1, 8], [2, 16], [PART_WARPS, 1], [1, 0])
    nb = gl.load(npad_ptr) // BLOCK_M
    KC = (K + BK - 1) // BK
    rw = gl.arange(0, RW, layout=gl.SliceLayout(1, WORDS_LAYOUT))
    rs = gl.arange(0, RW, layout=LS)
    j = gl.arange(0, 16, layout=gl.SliceLayout(0, WORDS_LAYOUT))
    ak = gl.arange(0, BK, layout=gl.SliceLayout(0, LA))
    rm = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, LA))
    t = 0
    for i in range(gl.program_id(0), nb * n_tiles * split, gl.num_programs(0)):
        blk, tile, ks = _item(i, n_tiles, split)
        lo, hi = _k_steps(ks, split, KC)
        expert = gl.load(expert_ids_ptr + blk).to(gl.int64)
        slot = gl.load(sorted_ptr + blk * BLOCK_M + rm)
        a_rows = (slot // TOPK if GEMM1 else slot).to(gl.int64) * stride_am
        a_ok = (slot < NUM)[:, None]
        # weight rows: the tile's n (GEMM1: n and N + n, gate and up)
        n_w = tile * BLOCK_N + rw % BLOCK_N
        w_row = W32 + expert * stride_we + swz_row_words(n_w + (rw // BLOCK_N) * N, ROWG, row_words)
        w_ok = (n_w < N)[:, None]
        n_s = tile * BLOCK_N + rs % BLOCK_N
        s_row = WS32 + expert * stride_wse + swz_row_scales(n_s + (rs // BLOCK_N) * N, ROWG, row_scale_words)
        for kc in range(lo, hi):
            s = t % STAGES
            mbarrier.wait(free.index(s), ((t - STAGES) // STAGES) & 1, pred=t >= STAGES)
            async_copy.async_copy_global_to_shared(codes_s.index(s), (w_row + kc * (ROWG * 16))[:, None] + j[None, :],
                                                   mask=w_ok)  # fmt: skip
            async_copy.async_copy_global_to_shared(scales_s.index(s), s_row + kc * ROWG, mask=n_s < N)
            k = kc * BK + ak
            async_copy.async_copy_global_to_shared(a_s.index(s), A + a_rows[:, None] + k[None, :],
                                                   mask=a_ok & (k < K)[None, :])  # fmt: skip
            async_copy.mbarrier_arrive(ready.index(s), increment_count=False)
            t += 1


@gluon.jit
def _decoder_steps(codes_s, scales_s, w_s, ready, free, dec_full, dec_free, npad_ptr, K, n_tiles, split,
                   BLOCK_M: gl.constexpr, STAGES: gl.constexpr, MUL1: gl.constexpr):  # fmt: skip
    """The decoder partition: swz_decoder over the CTA's step count."""
    nb = gl.load(npad_ptr) // BLOCK_M
    KC = (K + BK - 1) // BK
    steps = 0
    for i in range(gl.program_id(0), nb * n_tiles * split, gl.num_programs(0)):
        lo, hi = _k_steps(i % split, split, KC)
        steps += hi - lo
    swz_decoder(codes_s, scales_s, w_s, ready, free, dec_full, dec_free, steps, STAGES, MUL1)


@gluon.jit
def _gemm1_out(g, u, B, O, slot, m_ok, expert, tile, N, stride_be, stride_om, alpha, limit, ACT: gl.constexpr,
               HAS_BIAS: gl.constexpr, OUT_QDQ: gl.constexpr, BLOCK_N: gl.constexpr):  # fmt: skip
    """kernels._gemm1_epilogue on [BM, BN] fp32 gate and up tiles: biases, bf16 rounding, the activation, with
    OUT_QDQ the MXFP4 grid (per 32 along n), and h[slot, n]."""
    L: gl.constexpr = g.type.layout
    n = tile * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, L))
    n_ok = n < N
    if HAS_BIAS:
        g += gl.load(B + expert * stride_be + n, mask=n_ok, other=0.0)[None, :]
        u += gl.load(B + expert * stride_be + N + n, mask=n_ok, other=0.0)[None, :]
    g = g.to(gl.bfloat16).to(gl.float32)  # SGLang rounds the GEMM1 output to bf16 before the activation
    u = u.to(gl.bfloat16).to(gl.float32)
    if ACT == 1:  # config.Act.SWIGLU_OAI
        g = gl.minimum(g, limit)
        u = gl.minimum(gl.maximum(u, -limit), limit)
        h = g * (1.0 / (1.0 + gl.exp(-alpha * g))) * (u + 1.0)  # tl.sigmoid's formula
    else:
        h = g * (1.0 / (1.0 + gl.exp(-g))) * u
    h = h.to(gl.bfloat16)
    if OUT_QDQ:
        h = qdq_rows(h)
    gl.store(O + slot[:, None] * stride_om + n[None, :], h, mask=m_ok[:, None] & n_ok[None, :])


@gluon.jit
def _gemm2_out(acc, B, TW, O, slot, m_ok, expert, tile, N, stride_be, stride_om, HAS_BIAS: gl.constexpr,
               BLOCK_N: gl.constexpr):  # fmt: skip
    """kernels._gemm2_store on a [BM, BN] fp32 tile: bias, the slot's routing weight, y[slot, n]."""
    L: gl.constexpr = acc.type.layout
    n = tile * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, L))
    n_ok = n < N
    if HAS_BIAS:
        acc += gl.load(B + expert * stride_be + n, mask=n_ok, other=0.0)[None, :]
    acc *= gl.load(TW + slot, mask=m_ok, other=0.0)[:, None]
    gl.store(O + slot[:, None] * stride_om + n[None, :], acc.to(O.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@gluon.jit
def _mma(a_s, w_s, dec_full, dec_free, free, B, TW, O, Part, Cnt, sorted_ptr, expert_ids_ptr, npad_ptr, NUM, N, K,
         stride_be, stride_om, alpha, limit, n_tiles, split, GEMM1: gl.constexpr, ACT: gl.constexpr,
         HAS_BIAS: gl.constexpr, OUT_QDQ: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
         STAGES: gl.constexpr):  # fmt: skip
    """Every item's K steps (GEMM1: two accumulators, gate and up), then its epilogue. The activation tile is read
    from the ring slot itself, which is freed (with the decoder's arrival) once the step's MMA has retired."""
    LO: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[PART_WARPS, 1],
                                                 instr_shape=[16, BLOCK_M, 16])  # fmt: skip
    # [BM, BN] epilogue tiles: 8 consecutive n a thread (16-byte stores of bf16 rows), a block of 32 in 4 lanes
    LE: gl.constexpr = gl.BlockedLayout([1, 8], [32 * 8 // BLOCK_N, BLOCK_N // 8], [PART_WARPS, 1], [1, 0])
    GROUPS: gl.constexpr = 2 if GEMM1 else 1  # wgmma groups a step
    nb = gl.load(npad_ptr) // BLOCK_M
    KC = (K + BK - 1) // BK
    rm = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, LE))
    t = 0
    for i in range(gl.program_id(0), nb * n_tiles * split, gl.num_programs(0)):
        blk, tile, ks = _item(i, n_tiles, split)
        lo, hi = _k_steps(ks, split, KC)
        acc = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, LO)
        acc_u = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, LO)
        t0 = t  # the item's first step: each step's buffers are released once, by the step after it or below
        for _ in range(lo, hi):
            b = t % NB
            mbarrier.wait(dec_full.index(b), (t // NB) & 1)
            a_t = a_s.index(t % STAGES).permute((1, 0))
            if GEMM1:
                acc = warpgroup_mma(w_s.index(b).slice(0, BLOCK_N), a_t, acc, is_async=True)
                acc_u = warpgroup_mma(w_s.index(b).slice(BLOCK_N, BLOCK_N), a_t, acc_u, is_async=True)
                acc, acc_u = warpgroup_mma_wait(GROUPS, deps=[acc, acc_u])
            else:
                acc = warpgroup_mma(w_s.index(b), a_t, acc, is_async=True)
                acc = warpgroup_mma_wait(GROUPS, deps=[acc])
            # step t - 1's MMA has retired: its operand buffer and its ring slot (activations) may be rewritten
            u = t - 1
            mbarrier.arrive(dec_free.index(u % NB), pred=t > t0)
            mbarrier.arrive(free.index(u % STAGES), pred=t > t0)
            t += 1
        if GEMM1:
            acc, acc_u = warpgroup_mma_wait(0, deps=[acc, acc_u])
        else:
            acc = warpgroup_mma_wait(0, deps=[acc])
        # the item's last step retired too: released before the epilogue, the workers fill the whole ring with the
        # next item while it runs (DeepSeek's GEMM2 items are 2 steps long: the epilogue is a large share of each)
        u = t - 1
        mbarrier.arrive(dec_free.index(u % NB), pred=t > t0)
        mbarrier.arrive(free.index(u % STAGES), pred=t > t0)
        expert = gl.load(expert_ids_ptr + blk).to(gl.int64)
        slot = gl.load(sorted_ptr + blk * BLOCK_M + rm)
        m_ok = slot < NUM
        slot = slot.to(gl.int64)
        acc = gl.convert_layout(gl.permute(acc, (1, 0)), LE)
        if GEMM1:
            acc_u = gl.convert_layout(gl.permute(acc_u, (1, 0)), LE)
            if split == 1:
                _gemm1_out(acc, acc_u, B, O, slot, m_ok, expert, tile, N, stride_be, stride_om, alpha, limit, ACT,
                           HAS_BIAS, OUT_QDQ, BLOCK_N)  # fmt: skip
            else:
                _split_k(acc, acc_u, B, O, Part, Cnt, blk * n_tiles + tile, ks, split, slot, m_ok, expert, tile, N,
                         stride_be, stride_om, alpha, limit, ACT, HAS_BIAS, OUT_QDQ, BLOCK_M, BLOCK_N)  # fmt: skip
        else:
            _gemm2_out(acc, B, TW, O, slot, m_ok, expert, tile, N, stride_be, stride_om, HAS_BIAS, BLOCK_N)


@gluon.jit
def _split_k(g, u, B, O, Part, Cnt, tile_id, ks, split, slot, m_ok, expert, tile, N, stride_be, stride_om, alpha,
             limit, ACT: gl.constexpr, HAS_BIAS: gl.constexpr, OUT_QDQ: gl.constexpr, BLOCK_M: gl.constexpr,
             BLOCK_N: gl.constexpr):  # fmt: skip
    """GEMM1 split over K (kernels.moe_gemm1_kernel's): each split writes its fp32 gate and up partials; the last to
    arrive (per-tile counter, left zeroed) sums them in split order and runs the epilogue."""
    L: gl.constexpr = g.type.layout
    elems: gl.constexpr = BLOCK_M * BLOCK_N
    local = (gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, L))[:, None] * BLOCK_N
             + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, L))[None, :])  # fmt: skip
    base = Part + tile_id.to(gl.int64) * (split * 2 * elems)
    gl.store(base + ks * (2 * elems) + local, g)
    gl.store(base + ks * (2 * elems) + elems + local, u)
    cta_barrier()  # every thread's partial is written before the arrival is published (release, gpu scope)
    arrived = gl.atomic_add(Cnt + tile_id, 1, sem="acq_rel")
    if arrived == split - 1:
        g = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, L)
        u = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, L)
        for s in range(split):  # fixed order: the sum does not depend on which split came last
            g += gl.load(base + s * (2 * elems) + local, cache_modifier=".cg")
            u += gl.load(base + s * (2 * elems) + elems + local, cache_modifier=".cg")
        _gemm1_out(g, u, B, O, slot, m_ok, expert, tile, N, stride_be, stride_om, alpha, limit, ACT, HAS_BIAS,
                   OUT_QDQ, BLOCK_N)  # fmt: skip
        gl.atomic_xchg(Cnt + tile_id, 0)


@gluon.jit(do_not_specialize=["NUM"])  # sizes per call (overlays.warmup)
def moe_gemm_ws_kernel(
    A, W, WS, B, TW, O, Part, Cnt, sorted_ptr, expert_ids_ptr, npad_ptr,
    NUM, N, K, stride_am, stride_we, stride_wn, stride_wse, stride_wsn, stride_be, stride_om, alpha, limit,
    n_tiles, split,
    GEMM1: gl.constexpr, TOPK: gl.constexpr, ACT: gl.constexpr, HAS_BIAS: gl.constexpr, OUT_QDQ: gl.constexpr,
    BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, ROWG: gl.constexpr, MUL1: gl.constexpr,
    STAGES: gl.constexpr = 4, PDL: gl.constexpr = False,
):  # fmt: skip
    """GEMM1 (h[slot, :N] = act(x[slot // TOPK] . [gate; up]^T + b13)) or GEMM2 (y[slot, :N] = tw[slot] * (h[slot] .
    w2^T + b2)) for the sort's blocks (kernels.moe_gemm1_kernel / moe_gemm2_kernel's arguments: A bf16 [rows, K],
    W int32 swz128 words [E, rows, Kp/8] in row groups of ROWG, WS uint8 scales [E, rows, stride_wsn], B fp32 [E,
    .] (HAS_BIAS), TW fp32 [NUM] (GEMM2), O [NUM, N], Part / Cnt: GEMM1's split-K partials and counters).
    stride_wn / stride_wse / stride_wsn: elements of W (words) and WS (bytes). Grid: (CTAs,) with CTAs <= SMs;
    num_warps 4 (the MMA warpgroup; the workers' 8 warps come on top). n_tiles: N tiles of BLOCK_N; split: K
    splits (GEMM1; 1 for GEMM2). PDL: everything it reads comes from the kernels before (the sort, the quantizer,
    GEMM1): it waits first, then lets the next launch."""
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
    RW: gl.constexpr = 2 * BLOCK_N if GEMM1 else BLOCK_N
    # Shared memory (api.ws_shared_bytes): the ring (codes 64 B + a scale word a weight row, 256 B an activation
    # row: wgmma reads those rows in place, so they are NVMMA-swizzled) and NB bf16 weight buffers
    codes_s, scales_s = weight_ring(STAGES, RW)
    a_s = gl.allocate_shared_memory(
        gl.bfloat16, [STAGES, BLOCK_M, BK], gl.NVMMASharedLayout.get_default_for([BLOCK_M, BK], gl.bfloat16)
    )
    w_s = gl.allocate_shared_memory(
        gl.bfloat16, [NB, RW, BK], gl.NVMMASharedLayout.get_default_for([RW, BK], gl.bfloat16)
    )
    # the ring's readers: the decoder (words) and the MMA (activations, once its wgmma retired); one operand writer
    ready, free, dec_full, dec_free = hand_off_barriers(STAGES, 1)
    W32 = W.to(gl.pointer_type(gl.int32))
    WS32 = WS.to(gl.pointer_type(gl.int32))
    gl.warp_specialize(
        [
            (_mma, (a_s, w_s, dec_full, dec_free, free, B, TW, O, Part, Cnt, sorted_ptr, expert_ids_ptr, npad_ptr,
                    NUM, N, K, stride_be, stride_om, alpha, limit, n_tiles, split, GEMM1, ACT, HAS_BIAS, OUT_QDQ,
                    BLOCK_M, BLOCK_N, STAGES)),
            (_decoder_steps, (codes_s, scales_s, w_s, ready, free, dec_full, dec_free, npad_ptr, K, n_tiles, split,
                              BLOCK_M, STAGES, MUL1)),
            (_loader, (A, W32, WS32, sorted_ptr, expert_ids_ptr, npad_ptr, NUM, N, K, stride_am, stride_we,
                       stride_wn, stride_wse // 4, stride_wsn // 4, n_tiles, split, codes_s, scales_s, a_s, ready,
                       free, GEMM1, TOPK, BLOCK_M, BLOCK_N, ROWG, STAGES)),
        ],
        [PART_WARPS, PART_WARPS],
        [DEC_REGS, LOAD_REGS],
    )  # fmt: skip
