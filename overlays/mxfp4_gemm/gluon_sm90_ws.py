"""The MXFP4 decode GEMM for sm90, warp-specialized (Gluon): C[M, N] = A[M, K] . W[N, K]^T, w4a4 (A quantized to
MXFP4 in the kernel, as the fused route), swz128 weights (mx.layout, row groups of 1 or 64), M <= 64.

Why (PERF.md round 11): the Triton kernel runs load, decode and MMA of a K tile in one chain of its warps, separated
by CTA barriers, and at decode sizes a CTA has only a few K tiles to pipeline; ncu at M 64 x 7168 x 2048 found it at
14% of DRAM. Here four partitions of one CTA hand tiles over mbarriers:
- loader (a warpgroup): cp.async of each K tile's codes [BN, 16 words], scales [BN words] and raw A [BM, 128] bf16
  into a STAGES-deep ring, every thread's copies completing on the slot's `ready` barrier;
- W decoder (a warpgroup): each tile's words (8 codes each, the rot encoding) to bf16 [BN, 128] in k order, stored
  as the MMA's shared-memory A operand (one of NB buffers);
- A quantizer (a warpgroup): each tile's A rows quantize-dequantized to MXFP4 values (kernels.qdq_mxfp4_fast's rule,
  bit for bit) into the MMA's B operand;
- MMA (the default partition, one warpgroup): acc[BN, BM] += W_tile . A_tile^T as bf16 wgmma, one in flight while
  the next tile's operands are awaited; then the split-K epilogue of kernels.py (fp32 partials, the last split to
  arrive sums them in split order).
Tile t of the CTA's K range uses ring slot t % STAGES and operand buffer t % NB on every side. Weight rows are the
MMA's M side (64 a warpgroup instruction), tokens its N side (BM = 16 / 32 / 64). K % 128 == 0 (swz128).
The interpreter cannot run Gluon: correctness is the GPU tests' (test_mxfp4_gemm_gpu.py), machine code the compile
report's.
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    warpgroup_mma,
    warpgroup_mma_wait,
)

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

# Registers a thread (setmaxnreg, per warpgroup; 512 threads share 65,536): the decoder holds a whole tile's words
# and bf16 values (BN 128: 16 + 64), the quantizer 64 rows of A, the loader pointers; the MMA warpgroup gets the rest
DEC_REGS: gl.constexpr = gl.constexpr(128)
QUANT_REGS: gl.constexpr = gl.constexpr(112)
LOAD_REGS: gl.constexpr = gl.constexpr(88)


@gluon.jit
def _loader(A, W32, WS32, m0, n0, M, N, kt0, n_tiles, stride_am, row_words, row_scale_words, codes_s, scales_s, a_s,
            ready, free, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, ROWG: gl.constexpr,
            STAGES: gl.constexpr):  # fmt: skip
    """Every K tile of the CTA's range into the ring, 16-byte copies (4-byte for the scale words); rows past N or M
    land as zeros. swz128 offsets (mx.layout group_rows, G = ROWG): a row's 16 words of chunk kc sit at
    (r // G) * G * row_words + kc * G * 16 + (r % G) * 16, its scale word at (r // G) * G * row_scale_words +
    kc * G + r % G."""
    LS: gl.constexpr = gl.BlockedLayout([1], [32], [PART_WARPS], [0])
    LA: gl.constexpr = gl.BlockedLayout([1, 8], [2, 16], [PART_WARPS, 1], [1, 0])
    r = n0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, WORDS_LAYOUT))
    w_row = swz_row_words(r, ROWG, row_words)
    w_ok = (r < N)[:, None]
    j = gl.arange(0, 16, layout=gl.SliceLayout(0, WORDS_LAYOUT))
    rs = n0 + gl.arange(0, BLOCK_N, layout=LS)
    s_row = swz_row_scales(rs, ROWG, row_scale_words)
    s_ok = rs < N
    am = m0 + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, LA))
    a_row = am.to(gl.int64) * stride_am
    a_ok = (am < M)[:, None]
    ak = gl.arange(0, BK, layout=gl.SliceLayout(0, LA))
    for t in range(n_tiles):
        s = t % STAGES
        kc = kt0 + t
        # slot s held tile t - STAGES: both consumers have read it
        mbarrier.wait(free.index(s), ((t - STAGES) // STAGES) & 1, pred=t >= STAGES)
        async_copy.async_copy_global_to_shared(codes_s.index(s), W32 + (w_row + kc * (ROWG * 16))[:, None] + j[None, :],
                                               mask=w_ok)  # fmt: skip
        async_copy.async_copy_global_to_shared(scales_s.index(s), WS32 + s_row + kc * ROWG, mask=s_ok)
        async_copy.async_copy_global_to_shared(a_s.index(s), A + a_row[:, None] + (kc * BK + ak)[None, :], mask=a_ok)
        async_copy.mbarrier_arrive(ready.index(s), increment_count=False)


@gluon.jit
def _a_quantizer(a_s, aq_s, ready, free, dec_full, dec_free, n_tiles, STAGES: gl.constexpr):
    """The A quantizer partition: each landed tile's A rows as MXFP4 values (bf16) into operand buffer t % NB, the
    whole tile at once (as the decoder)."""
    LA: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [PART_WARPS, 1], [1, 0])  # a block of 32: 4 lanes
    for t in range(n_tiles):
        s = t % STAGES
        b = t % NB
        mbarrier.wait(ready.index(s), (t // STAGES) & 1)
        x = a_s.index(s).load(LA)
        mbarrier.arrive(free.index(s))
        mbarrier.wait(dec_free.index(b), ((t - NB) // NB) & 1, pred=t >= NB)
        aq_s.index(b).store(qdq_rows(x))
        fence_async_shared()
        mbarrier.arrive(dec_full.index(b))


@gluon.jit
def _mma(w_s, aq_s, dec_full, dec_free, C, Part, Cnt, m0, n0, M, N, pid_m, pid_n, pid_k, split_k, n_tiles,
         stride_cm, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, SPLIT: gl.constexpr, RED: gl.constexpr):  # fmt: skip
    """acc[BN, BM] over the CTA's K tiles (one wgmma group in flight), then the tile's output or split-K partial."""
    LO: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[PART_WARPS, 1],
                                                 instr_shape=[16, BLOCK_M, 16])  # fmt: skip
    acc = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, LO)
    for t in range(n_tiles):
        b = t % NB
        mbarrier.wait(dec_full.index(b), (t // NB) & 1)
        acc = warpgroup_mma(w_s.index(b), aq_s.index(b).permute((1, 0)), acc, is_async=True)
        acc = warpgroup_mma_wait(1, deps=[acc])
        # the MMA of tile t - 1 has retired: its operand buffers may be rewritten
        mbarrier.arrive(dec_free.index((t + NB - 1) % NB), pred=t > 0)
    acc = warpgroup_mma_wait(0, deps=[acc])
    rn = n0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, LO))
    rm = m0 + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, LO))
    c_ptrs = C + rm.to(gl.int64)[None, :] * stride_cm + rn[:, None]
    c_mask = (rm[None, :] < M) & (rn[:, None] < N)
    if SPLIT:
        _split_k_epilogue(acc, c_ptrs, c_mask, Part, Cnt, pid_m, pid_n, pid_k, N, split_k, BLOCK_M, BLOCK_N, RED, LO)
    else:
        gl.store(c_ptrs, acc.to(C.dtype.element_ty), mask=c_mask)


@gluon.jit
def _split_k_epilogue(acc, c_ptrs, c_mask, Part, Cnt, pid_m, pid_n, pid_k, N, split_k, BLOCK_M: gl.constexpr,
                      BLOCK_N: gl.constexpr, RED: gl.constexpr, LO: gl.constexpr):  # fmt: skip
    """kernels._split_k_epilogue in Gluon: every split writes its fp32 partial; the last to arrive (per-tile counter)
    sums all partials in split order, RED per L2 round trip, stores C and resets the counter."""
    tile = pid_m * gl.cdiv(N, BLOCK_N) + pid_n
    tile_elems: gl.constexpr = BLOCK_N * BLOCK_M
    local = (gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, LO))[:, None] * BLOCK_M
             + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, LO))[None, :])  # fmt: skip
    base = Part + tile.to(gl.int64) * (split_k * tile_elems)
    gl.store(base + pid_k * tile_elems + local, acc)
    cta_barrier()  # every thread's partial is written before the arrival is published (release, gpu scope)
    arrived = gl.atomic_add(Cnt + tile, 1, sem="acq_rel")
    if arrived == split_k - 1:
        total = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, LO)
        for s0 in range(0, split_k, RED):
            for i in gl.static_range(RED):
                total += gl.load(base + (s0 + i) * tile_elems + local, mask=s0 + i < split_k, other=-0.0,
                                 cache_modifier=".cg")  # fmt: skip
        gl.store(c_ptrs, total.to(c_ptrs.dtype.element_ty), mask=c_mask)
        gl.atomic_xchg(Cnt + tile, 0)


@gluon.jit(do_not_specialize=["M", "split_k", "k_per_split"])  # sizes per call (overlays.warmup)
def mxfp4_gemm_ws_kernel(
    A, W, WS, C, Part, Cnt,
    M, N, K, split_k, k_per_split,
    stride_am, stride_wn, stride_wsn, stride_cm,
    BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, ROWG: gl.constexpr, MUL1: gl.constexpr, SPLIT: gl.constexpr,
    STAGES: gl.constexpr = 4, RED: gl.constexpr = 1,
):  # fmt: skip
    """Grid (N tiles, splits, M tiles), num_warps 4 (the MMA warpgroup; the workers' 12 warps come on top).
    A bf16 [M, K] (unit stride in K), W uint8 swz128 codes [N, K/2] in row groups of ROWG, WS uint8 E8M0 [N,
    stride_wsn] (same groups; stride_wsn % 4 == 0), C [M, N]; Part / Cnt: kernels.mxfp4_gemm_kernel's split-K
    partials and per-tile counters (SPLIT only). K tiles [k_per_split * pid_k, + k_per_split) of K / 128."""
    pid_n = gl.program_id(0)
    pid_k = gl.program_id(1)
    pid_m = gl.program_id(2)
    kt0 = pid_k * k_per_split
    n_tiles = gl.maximum(gl.minimum(kt0 + k_per_split, K // BK) - kt0, 0)
    m0 = pid_m * BLOCK_M
    n0 = pid_n * BLOCK_N
    # Shared memory: the ring (codes 64 B + a scale word a weight row, raw A 256 B a token row) and NB operand buffers
    # (bf16 W 256 B a row, quantized A 256 B a token row): api.ws_shared_bytes
    codes_s, scales_s = weight_ring(STAGES, BLOCK_N)
    a_s = gl.allocate_shared_memory(gl.bfloat16, [STAGES, BLOCK_M, BK], gl.SwizzledSharedLayout(1, 1, 1, [1, 0]))
    w_s = gl.allocate_shared_memory(
        gl.bfloat16, [NB, BLOCK_N, BK], gl.NVMMASharedLayout.get_default_for([BLOCK_N, BK], gl.bfloat16)
    )
    aq_s = gl.allocate_shared_memory(
        gl.bfloat16, [NB, BLOCK_M, BK], gl.NVMMASharedLayout.get_default_for([BLOCK_M, BK], gl.bfloat16)
    )
    # the ring's readers: the decoder and the quantizer; the operands' writers: the same two
    ready, free, dec_full, dec_free = hand_off_barriers(STAGES, 2)
    W32 = W.to(gl.pointer_type(gl.int32))
    WS32 = WS.to(gl.pointer_type(gl.int32))
    gl.warp_specialize(
        [
            (_mma, (w_s, aq_s, dec_full, dec_free, C, Part, Cnt, m0, n0, M, N, pid_m, pid_n, pid_k, split_k,
                    n_tiles, stride_cm, BLOCK_M, BLOCK_N, SPLIT, RED)),
            (swz_decoder, (codes_s, scales_s, w_s, ready, free, dec_full, dec_free, n_tiles, STAGES, MUL1)),
            (_a_quantizer, (a_s, aq_s, ready, free, dec_full, dec_free, n_tiles, STAGES)),
            (_loader, (A, W32, WS32, m0, n0, M, N, kt0, n_tiles, stride_am, stride_wn // 4, stride_wsn // 4,
                       codes_s, scales_s, a_s, ready, free, BLOCK_M, BLOCK_N, ROWG, STAGES)),
        ],
        [PART_WARPS, PART_WARPS, PART_WARPS],
        [DEC_REGS, QUANT_REGS, LOAD_REGS],
    )  # fmt: skip
