"""Gluon pieces of the warp-specialized sm90 MXFP4 kernels (mxfp4_gemm/gluon_sm90_ws.py, mxfp4_moe/gluon_sm90_ws.py):
the swz128 weight decode as a partition of its own, the swz128 address rule, and the A-row MXFP4 quantizer. The
numerics are mx.triton_helpers' (the same PTX): the Triton and the Gluon kernels multiply the same values.

Hand-offs between partitions are mbarriers indexed by the partition-common tile counter t: a ring of STAGES slots
(`ready`: the loader's copies of tile t landed; `free`: every consumer of the slot has read it) and NB operand
buffers (`dec_full`: the workers stored tile t's MMA operands; `dec_free`: the MMA that read them retired). A wait
for the k-th completion of a barrier waits for phase k & 1.
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier

try:  # the CTA (in a partition: the partition's) barrier: Triton 3.7 `barrier`, 3.6 `thread_barrier`
    from triton.experimental.gluon.language import barrier as cta_barrier
except ImportError:
    from triton.experimental.gluon.language import thread_barrier as cta_barrier

from speedrun.overlays.mx.layout import WORD_UNIT
from speedrun.overlays.mx.triton_helpers import E2M1_SWZ1_ASM, E2M1_SWZ_ASM, QDQ_BF16X2_ASM

BK: gl.constexpr = gl.constexpr(128)  # K codes a tile: one swz128 chunk (16 words a row, one scale word)
NB: gl.constexpr = gl.constexpr(2)  # operand buffers: the workers fill one while the MMA reads the other
PART_WARPS: gl.constexpr = gl.constexpr(4)  # every partition is one warpgroup (setmaxnreg works per warpgroup)
_SWZ1: gl.constexpr = gl.constexpr(E2M1_SWZ1_ASM.value)
_SWZ: gl.constexpr = gl.constexpr(E2M1_SWZ_ASM.value)
_QDQ: gl.constexpr = gl.constexpr(QDQ_BF16X2_ASM.value)
_WU: gl.constexpr = gl.constexpr(WORD_UNIT)
# one weight row's 16 words of a chunk a lane quad (16 B a lane): conflict-free shared loads, and the decoded values
# land in the wgmma A fragment order, so the decoder stores them with stmatrix
WORDS_LAYOUT: gl.constexpr = gl.constexpr(gl.BlockedLayout([1, 4], [8, 4], [4, 1], [1, 0]))


@gluon.jit
def weight_ring(STAGES: gl.constexpr, ROWS: gl.constexpr):
    """The ring's weight side, STAGES slots: codes [ROWS, 16] words (unswizzled 64-byte rows: the decoder's lane quads
    read them conflict-free) and one scale word a row."""
    codes_s = gl.allocate_shared_memory(gl.int32, [STAGES, ROWS, 16], gl.SwizzledSharedLayout(1, 1, 1, [1, 0]))
    scales_s = gl.allocate_shared_memory(gl.int32, [STAGES, ROWS], gl.SwizzledSharedLayout(1, 1, 1, [0]))
    return codes_s, scales_s


@gluon.jit
def hand_off_barriers(STAGES: gl.constexpr, WORKERS: gl.constexpr):
    """The four barrier arrays (module docstring), initialized: `ready` completes when every loader thread's copies
    have landed (cp.async noinc arrivals), `free` when the slot's two readers are done with it, `dec_full` when the
    WORKERS partitions that store MMA operands have stored them, `dec_free` when the MMA that read them retired."""
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    free = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    dec_full = gl.allocate_shared_memory(gl.int64, [NB, 1], mbarrier.MBarrierLayout())
    dec_free = gl.allocate_shared_memory(gl.int64, [NB, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=PART_WARPS * 32)
        mbarrier.init(free.index(i), count=2)
    for i in gl.static_range(NB):
        mbarrier.init(dec_full.index(i), count=WORKERS)
        mbarrier.init(dec_free.index(i), count=1)
    return ready, free, dec_full, dec_free


@gluon.jit
def swz_row_words(r, ROWG: gl.constexpr, row_words):
    """Word offset (int64) of chunk 0 of weight rows `r` in swz128 with rows in groups of ROWG (mx.layout
    group_rows; ROWG 1: row-major); chunk kc of a row is kc * ROWG * 16 words further."""
    return gl.multiple_of((r // ROWG).to(gl.int64) * (ROWG * row_words) + (r % ROWG) * _WU, _WU)


@gluon.jit
def swz_row_scales(r, ROWG: gl.constexpr, row_scale_words):
    """Offset (int64, in 4-byte words) of the scale word of chunk 0 of rows `r` (same groups); chunk kc's is kc * ROWG
    words further (its 4 bytes: the E8M0 of its 4 groups of 32)."""
    return (r // ROWG).to(gl.int64) * (ROWG * row_scale_words) + r % ROWG


@gluon.jit
def decode_swz_rows(words, sc, MUL1: gl.constexpr):
    """swz128 words int32 [R, 16] (lane quad c holds words 4c + w, w = 0..3) and their rows' scale words [R] ->
    bf16 [R, 128] in k order (mx.triton_helpers.mxfp4_swz_words_bf16's decode: word 4c + w, slot 4t + 2u + h holds
    k = 32w + 16u + 8h + 2c + t). Byte w of a scale word is the E8M0 of group w."""
    R: gl.constexpr = words.shape[0]
    w = gl.arange(0, 16, layout=gl.SliceLayout(0, words.type.layout)) % 4
    e = (sc[:, None] >> (w * 8)[None, :]) & 0xFF
    if MUL1:  # 2**126 and the scale in one bf16x2 multiply by 2**(e - 1) (every e <= 128: the layout checked it)
        v0, v1, v2, v3, v4, v5, v6, v7 = gl.inline_asm_elementwise(
            _SWZ1, "=h,=h,=h,=h,=h,=h,=h,=h,r,r", [words, (e + 126) * 0x00800080], dtype=(gl.bfloat16,) * 8,
            is_pure=True, pack=1)  # fmt: skip
    else:  # bf16 2**(e - 127) in both halves (0 -> the subnormal 2**-127, 255 -> NaN), as mx.e8m0_to_bf16
        half = gl.where(e == 0, 0x40, gl.where(e == 255, 0x7FC0, e << 7))
        v0, v1, v2, v3, v4, v5, v6, v7 = gl.inline_asm_elementwise(
            _SWZ, "=h,=h,=h,=h,=h,=h,=h,=h,r,r", [words, half | (half << 16)], dtype=(gl.bfloat16,) * 8,
            is_pure=True, pack=1)  # fmt: skip
    x = gl.join(gl.join(gl.join(v0, v1), gl.join(v2, v3)), gl.join(gl.join(v4, v5), gl.join(v6, v7)))
    x = x.reshape([R, 4, 4, 2, 2, 2])  # (row, c, w, h, u, t)
    x = x.permute((0, 2, 4, 3, 1, 5))  # -> (row, w, u, h, c, t)
    return x.reshape([R, BK])


@gluon.jit
def swz_decoder(codes_s, scales_s, w_s, ready, free, dec_full, dec_free, n_tiles, STAGES: gl.constexpr,
                MUL1: gl.constexpr):  # fmt: skip
    """The W decoder partition: each landed tile's weight rows (codes_s [STAGES, R, 16] words, scales_s [STAGES, R]
    scale words) decoded into operand buffer w_s[t % NB] [R, 128] bf16, the whole tile at once (stores of row slices
    would each need a partition barrier: the compiler cannot tell the slices apart)."""
    for t in range(n_tiles):
        s = t % STAGES
        b = t % NB
        mbarrier.wait(ready.index(s), (t // STAGES) & 1)
        words = codes_s.index(s).load(WORDS_LAYOUT)
        sc = scales_s.index(s).load(gl.SliceLayout(1, WORDS_LAYOUT))
        mbarrier.arrive(free.index(s))
        # buffer b held tile t - NB: the MMA that read it has retired
        mbarrier.wait(dec_free.index(b), ((t - NB) // NB) & 1, pred=t >= NB)
        w_s.index(b).store(decode_swz_rows(words, sc, MUL1))
        fence_async_shared()  # the stores are read by wgmma (the async proxy)
        mbarrier.arrive(dec_full.index(b))


@gluon.jit
def qdq_rows(x):
    """bf16 [R, C] -> bf16 dequant(quant_mxfp4(x)) per 32 along C (mxfp4_gemm.kernels.qdq_mxfp4_fast's rule and
    sm90 PTX, bit for bit the reference quantizer): the layout must hold each block of 32 within a warp."""
    R: gl.constexpr = x.shape[0]
    C: gl.constexpr = x.shape[1]
    x3 = x.reshape([R, C // 32, 32])
    amax = gl.max(gl.abs(x3.to(gl.float32)), axis=2)
    field = (((amax.to(gl.uint32, bitcast=True) + 0x200000) >> 23) & 0xFF).to(gl.int32)
    eb = gl.where(field == 255, 254, gl.maximum(field - 2, 0))  # the block's E8M0 (reference step 1)
    zero = gl.zeros_like(x3, dtype=gl.int32)
    e2 = zero + (eb * 0x00800080)[:, :, None]  # E << 7 in both halves
    s6 = zero + (eb * 0x00800080 + 0x01400140)[:, :, None]  # bf16 6 * 2**E in both halves
    y = gl.inline_asm_elementwise(_QDQ, "=r,r,r,r,r,r", [x3, e2, s6], dtype=gl.bfloat16, is_pure=True, pack=2)
    return y.reshape([R, C])


__all__ = ["BK", "NB", "PART_WARPS", "WORDS_LAYOUT", "cta_barrier", "decode_swz_rows", "hand_off_barriers", "qdq_rows",
           "swz_decoder", "swz_row_scales", "swz_row_words", "weight_ring"]  # fmt: skip
