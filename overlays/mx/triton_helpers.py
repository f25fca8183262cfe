"""Triton device functions for MXFP4, shared by the MXFP4 GEMM and MoE kernels.

All operate on register tiles whose last axis is K (a multiple of 32); R and C are the tile shape (constexpr).
- `mxfp4_to_bf16(packed, scales, R, C)`: packed E2M1 [R, C/2] + E8M0 [R, C/32] -> bf16 [R, C] (sm90 path).
- `quant_mxfp4(x, R, C)`: fp32 [R, C] -> (packed uint8 [R, C/2], scales uint8 [R, C/32]), bit-exact with
  `speedrun.overlays.mx.quant.quant_mxfp4` (the rule is stated there).
- `qdq_mxfp4_bf16(x, R, C)`: fp32 [R, C] -> bf16 dequant(quant(x)) without building codes (the fused
  activation-quant path of the dequant GEMM; same values as quant_mxfp4 then mxfp4_to_bf16).
- `mxfp4_halves_bf16(packed, scales, R, C, ASM)`: the fast decode (sm90 inline PTX when ASM) as (even-K, odd-K)
  halves [R, C/2]; `split_k_pairs` splits the other GEMM operand the same way.
- `via_regs(x)`: an identity PTX mov on a bf16 tile (CUDA only): the GEMM's and MoE's b_regs knob.
Decoding is exact (values are built from bits, no exp2/log2 approximations), so every path agrees bitwise.
"""

from __future__ import annotations

import triton
import triton.language as tl

from speedrun.overlays.mx.layout import PAIR_MASK, ROT, SPLIT3


@triton.jit
def via_regs(x):
    """Identity PTX mov on a bf16 tile (CUDA only; the b_regs knob). Fed to tl.dot as the shared-memory operand,
    it makes Triton 3.6 store that operand from registers inside the K loop (a local_alloc there) instead of
    pipelining it by cp.async: the dot is then not "properly async", so its wgmmas issue back to back instead of
    one WARPGROUP.DEPBAR each (mxfp4_moe/PERF.md "b_regs", mxfp4_gemm/PERF.md Round 5)."""
    return tl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r", [x], dtype=tl.bfloat16, is_pure=True, pack=2)


@triton.jit
def pow2_f32(e):
    """int32 exponent in [-127, 127] -> float32 2**e, exact (2**-127 is the subnormal 0x00400000)."""
    bits = tl.where(e >= -126, (e + 127) << 23, 0x00400000)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def e8m0_to_f32(s):
    """uint8 E8M0 -> float32 2**(s-127); 255 -> NaN."""
    si = s.to(tl.int32)
    bits = tl.where(si == 0, 0x00400000, si << 23)
    bits = tl.where(si == 255, 0x7FC00000, bits)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def e2m1_to_f32(codes):
    """E2M1 codes (any int type, 0..15) -> float32 values 0, 0.5, ..., 6 with sign bit 3."""
    c = codes.to(tl.uint32)
    mag = c & 7
    # codes >= 2 are normal: exponent (c >> 1) + 126, mantissa bit c & 1, i.e. (c << 22) + (126 << 23).
    bits = tl.where(mag >= 2, (mag << 22) + (126 << 23), tl.where(mag == 1, 126 << 23, 0))
    bits = bits | ((c & 8) << 28)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def unpack_e2m1(packed, R: tl.constexpr, C: tl.constexpr):
    """packed uint8 [R, C/2] -> codes uint32 [R, C] (element 2i from the low nibble)."""
    p = packed.to(tl.uint32)
    return tl.join(p & 0xF, p >> 4).reshape(R, C)


@triton.jit
def pack_e2m1(codes, R: tl.constexpr, C: tl.constexpr):
    """codes [R, C] (0..15) -> packed uint8 [R, C/2] (element 2i into the low nibble)."""
    lo, hi = tl.split(codes.to(tl.uint32).reshape(R, C // 2, 2))
    return (lo | (hi << 4)).to(tl.uint8)


@triton.jit
def mxfp4_to_bf16(packed, scales, R: tl.constexpr, C: tl.constexpr):
    """packed E2M1 uint8 [R, C/2] + E8M0 uint8 [R, C/32] -> bf16 [R, C] (exact for normal bf16 results)."""
    vals = e2m1_to_f32(unpack_e2m1(packed, R, C)).reshape(R, C // 32, 32)
    return (vals * e8m0_to_f32(scales)[:, :, None]).reshape(R, C).to(tl.bfloat16)


@triton.jit
def mxfp4_block_exp(x, R: tl.constexpr, C: tl.constexpr):
    """fp32 [R, C] -> unbiased E8M0 exponent int32 [R, C/32]: amax rounded on its bits (+0x200000), -2."""
    amax = tl.max(tl.abs(x.reshape(R, C // 32, 32)), axis=2)
    field = (((amax.to(tl.uint32, bitcast=True) + 0x200000) >> 23) & 0xFF).to(tl.int32)
    e = tl.where(field == 255, 127, field - 129)  # inf amax -> 127, like clamp(log2(inf))
    return tl.maximum(e, -127)


@triton.jit
def e2m1_round(q):
    """fp32 values already divided by the block scale -> E2M1 codes uint32 (RNE, saturate at 6, signed zero)."""
    bits = q.to(tl.uint32, bitcast=True)
    sign = (bits >> 28) & 8
    mbits = bits & 0x7FFFFFFF
    mag = mbits.to(tl.float32, bitcast=True)
    # |q| < 1: adding 2**22 rounds to a multiple of 0.5 (RNE); the low bits then hold 0, 1 or 2.
    den = (mag + 4194304.0).to(tl.uint32, bitcast=True) - 0x4A800000
    # 1 <= |q| < 6: round to one mantissa bit (ties to even) and rebias the exponent 127 -> 1.
    nor = (mbits - (126 << 23) + 0x1FFFFF + ((mbits >> 22) & 1)) >> 22
    code = tl.where(mag < 1.0, den, nor)
    code = tl.where(mag >= 6.0, 7, code)
    return code | sign


@triton.jit
def e2m1_round_value(q):
    """Like e2m1_round but returns the rounded float32 value (same rounding, no code)."""
    bits = q.to(tl.uint32, bitcast=True)
    mbits = bits & 0x7FFFFFFF
    mag = mbits.to(tl.float32, bitcast=True)
    den = (mag + 4194304.0) - 4194304.0
    nor = ((mbits + 0x1FFFFF + ((mbits >> 22) & 1)) & 0xFFC00000).to(tl.float32, bitcast=True)
    r = tl.where(mag < 1.0, den, nor)
    r = tl.where(mag >= 6.0, 6.0, r)
    return (r.to(tl.uint32, bitcast=True) | (bits & 0x80000000)).to(tl.float32, bitcast=True)


@triton.jit
def quant_mxfp4(x, R: tl.constexpr, C: tl.constexpr):
    """fp32 [R, C] -> (packed E2M1 uint8 [R, C/2], E8M0 uint8 [R, C/32]), the reference quantizer."""
    e = mxfp4_block_exp(x, R, C)
    q = x.reshape(R, C // 32, 32) * pow2_f32(-e)[:, :, None]
    codes = e2m1_round(q).reshape(R, C)
    return pack_e2m1(codes, R, C), (e + 127).to(tl.uint8)


@triton.jit
def qdq_mxfp4_bf16(x, R: tl.constexpr, C: tl.constexpr):
    """fp32 [R, C] -> bf16 [R, C] equal to dequant(quant_mxfp4(x)): the activation a w4a4 GEMM multiplies."""
    e = mxfp4_block_exp(x, R, C)
    q = x.reshape(R, C // 32, 32) * pow2_f32(-e)[:, :, None]
    v = e2m1_round_value(q) * pow2_f32(e)[:, :, None]
    return v.reshape(R, C).to(tl.bfloat16)


# E2M1 -> bf16 on packed registers (sm90 fast path): one asm instance takes 4 bytes (8 codes) and returns the 4 low-
# nibble values and the 4 high-nibble values, two bf16 per 32-bit register, without any cross-byte mixing (so it is
# correct for whatever register layout Triton picks). Per register pair: spread bytes to 16-bit halves (prmt), mask
# one nibble per half, place magnitude bits at bf16 bits 8..6 and the sign at bit 15 with one IMAD (x*0x1040 =
# x<<6 + x<<12, no overlap), mask; that bf16 pattern is exactly E2M1 * 2**-126 (code 1 = bf16 subnormal 2**-127),
# so one bf16x2 multiply by 2**126 and one by the E8M0 scale finish it (both exact for normal results).
# ~15 integer ops + 8 bf16x2 multiplies per 8 values, vs ~30 ops per value for the generic path above.
E2M1_BF16_ASM: tl.constexpr = tl.constexpr(
    "{\n"
    ".reg .b32 q<2>, t<4>, c;\n"
    "mov.b32 c, 0x7E807E80;\n"
    "prmt.b32 q0, $4, 0, 0x4140;\n"
    "prmt.b32 q1, $4, 0, 0x4342;\n"
    "and.b32 t0, q0, 0x000F000F;\n"
    "and.b32 t1, q1, 0x000F000F;\n"
    "and.b32 t2, q0, 0x00F000F0;\n"
    "and.b32 t3, q1, 0x00F000F0;\n"
    "mul.lo.u32 t0, t0, 0x1040;\n"
    "mul.lo.u32 t1, t1, 0x1040;\n"
    "mul.lo.u32 t2, t2, 0x104;\n"
    "mul.lo.u32 t3, t3, 0x104;\n"
    "and.b32 t0, t0, 0x81C081C0;\n"
    "and.b32 t1, t1, 0x81C081C0;\n"
    "and.b32 t2, t2, 0x81C081C0;\n"
    "and.b32 t3, t3, 0x81C081C0;\n"
    "mul.rn.bf16x2 t0, t0, c;\n"
    "mul.rn.bf16x2 t1, t1, c;\n"
    "mul.rn.bf16x2 t2, t2, c;\n"
    "mul.rn.bf16x2 t3, t3, c;\n"
    "mul.rn.bf16x2 $0, t0, $5;\n"
    "mul.rn.bf16x2 $1, t1, $6;\n"
    "mul.rn.bf16x2 $2, t2, $5;\n"
    "mul.rn.bf16x2 $3, t3, $6;\n"
    "}"
)


# MXFP4 quantize-dequantize of bf16 values in registers, sm90 PTX (the GEMMs' fused A load, the Gluon kernels'
# quantizer: mxfp4_gemm.kernels.qdq_mxfp4_fast, mx.gluon_helpers.qdq_rows).
#
# Same values as `mx.quant.qdq_mxfp4` (the reference rule) for finite inputs below 2**100 in magnitude, with a
# fraction of the instructions of `mx.triton_helpers.qdq_mxfp4_bf16` (which builds each code on fp32 bits and
# scales twice). The rule, per block of 32 along K, once the block's exponent E is known (reference step 1):
# every element rounds to a multiple of u = 2**(max(e, E) - 1), e its own exponent, ties to even, then
# saturates at 6 * 2**E, sign kept. Why that is the reference's E2M1 rounding of q = x / 2**E: for |q| >= 1
# (e >= E) a multiple of 2**(e-1) keeps one mantissa bit; for |q| < 1 a multiple of 2**(E-1) is a multiple of
# 0.5 in q; |q| < 7 always (the amax rounding keeps it there), so q in [6, 8) saturates to 6 as the rule does.
# Rounding to a multiple of u is (x + c) - c with c = 1.5 * 2**p * u, p the significand width: both adds are
# exact except the one rounding wanted, RNE like the reference, and c is an even multiple of u so ties go to
# the even multiple of u. On sm90 the two adds are one bf16x2 pair (p = 7, both halves of a register at once),
# the exponent max and the saturation are 16-bit integer min/max on the bit patterns (non-negative floats order
# like their bits), and the sign is OR-ed back (so -0.1 * 2**E gives -0.0, code 8, as the reference).
# 8 instructions per 2 elements after the block amax, instead of ~30.

# $0: out bf16x2, $1: x bf16x2, $2 (= $3): E << 7 in both 16-bit halves, $4 (= $5): 6 * 2**E bf16 in both halves.
QDQ_BF16X2_ASM: tl.constexpr = tl.constexpr(
    "{\n"
    ".reg .b32 f, c, v;\n"
    "and.b32 f, $1, 0x7F807F80;\n"  # each element's exponent field
    "max.u16x2 f, f, $2;\n"  # max(e, E) field
    "add.u32 c, f, 0x03400340;\n"  # c = 1.5 * 2**7 * 2**(max - 1): field + 6, mantissa 0x40 (no carry out of a half)
    "add.rn.bf16x2 v, $1, c;\n"
    "sub.rn.bf16x2 v, v, c;\n"  # x rounded to a multiple of 2**(max - 1), RNE
    "and.b32 v, v, 0x7FFF7FFF;\n"
    "min.u16x2 v, v, $4;\n"  # saturate the magnitude at 6 * 2**E
    "lop3.b32 $0, v, $1, 0x80008000, 0xF8;\n"  # | sign of x
    "}"
)


@triton.jit
def e8m0_to_bf16(s):
    """uint8 E8M0 -> bfloat16 2**(s-127) built from bits (0 -> subnormal 2**-127, 255 -> NaN)."""
    si = s.to(tl.uint16)
    bits = tl.where(si == 0, 0x40, si << 7)
    bits = tl.where(si == 255, 0x7FC0, bits)
    return bits.to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def mxfp4_halves_bf16(packed, scales, R: tl.constexpr, C: tl.constexpr, ASM: tl.constexpr, BLK: tl.constexpr = 32):
    """packed [R, C/2] + E8M0 [R, C/BLK] -> (even-K values, odd-K values), each bf16 [R, C/2] (low / high nibbles).
    BLK: the elements a scale covers (32: MX; 16: SGLang's fp4_mx_block16 KV cache).

    No join/reshape of the big tile: a GEMM multiplies each half by the matching half of the other operand.
    ASM=True is the sm90 register path (inline PTX); ASM=False is exact portable Triton (and the interpreter)."""
    if ASM:
        sc = e8m0_to_bf16(scales)
        sc = tl.broadcast_to(sc[:, :, None], (R, C // BLK, BLK // 2)).reshape(R, C // 2)
        lo, hi = tl.inline_asm_elementwise(E2M1_BF16_ASM, "=r,=r,=r,=r,r,r,r", [packed, sc],
                                           dtype=(tl.bfloat16, tl.bfloat16), is_pure=True, pack=4)  # fmt: skip
    else:
        p = packed.to(tl.uint32)
        sf = e8m0_to_f32(scales)
        sf = tl.broadcast_to(sf[:, :, None], (R, C // BLK, BLK // 2)).reshape(R, C // 2)
        lo = (e2m1_to_f32(p & 0xF) * sf).to(tl.bfloat16)
        hi = (e2m1_to_f32(p >> 4) * sf).to(tl.bfloat16)
    return lo, hi


@triton.jit
def mxfp4_to_bf16_fast(packed, scales, R: tl.constexpr, C: tl.constexpr, ASM: tl.constexpr, BLK: tl.constexpr = 32):
    """Like mxfp4_to_bf16 but through mxfp4_halves_bf16 (the halves interleaved back along K)."""
    lo, hi = mxfp4_halves_bf16(packed, scales, R, C, ASM, BLK)
    return tl.join(lo, hi).reshape(R, C)


@triton.jit
def split_k_pairs(x, R: tl.constexpr, C: tl.constexpr):
    """[R, C] -> (even-K columns, odd-K columns), each [R, C/2]: the partner of mxfp4_halves_bf16."""
    return tl.split(x.reshape(R, C // 2, 2))


# Word variant (one asm instance per 32-bit word = 8 codes, pack=1): no byte (un)packing at all. Nibble pairs 16 bits
# apart (i, i+4) share a register: mask, then shift/IMAD the magnitude to bits 8..6 and the sign to 15 as above.
# The two word decodes share their body: place each nibble pair's magnitude/sign (_WORD_PLACE), then multiply by
# the scale operand $9 and unpack the halves (_WORD_SCALE_OUT); they differ only in the 2**126 multiply before.
_WORD_PLACE = (
    "and.b32 t0, $8, 0x000F000F;\n"
    "and.b32 t1, $8, 0x00F000F0;\n"
    "and.b32 t2, $8, 0x0F000F00;\n"
    "and.b32 t3, $8, 0xF000F000;\n"
    "mul.lo.u32 t0, t0, 0x1040;\n"
    "mul.lo.u32 t1, t1, 0x104;\n"
    "shr.b32 t2, t2, 2;\n"
    "mul.lo.u32 t2, t2, 0x41;\n"
    "shr.b32 u, t3, 6;\n"
    "or.b32 t3, t3, u;\n"
    "and.b32 t0, t0, 0x81C081C0;\n"
    "and.b32 t1, t1, 0x81C081C0;\n"
    "and.b32 t2, t2, 0x81C081C0;\n"
    "and.b32 t3, t3, 0x81C081C0;\n"
)
_WORD_SCALE_OUT = (
    "mul.rn.bf16x2 t0, t0, $9;\n"
    "mul.rn.bf16x2 t1, t1, $9;\n"
    "mul.rn.bf16x2 t2, t2, $9;\n"
    "mul.rn.bf16x2 t3, t3, $9;\n"
    "mov.b32 {$0, $4}, t0;\n"
    "mov.b32 {$1, $5}, t1;\n"
    "mov.b32 {$2, $6}, t2;\n"
    "mov.b32 {$3, $7}, t3;\n"
    "}"
)
E2M1_WORD_ASM: tl.constexpr = tl.constexpr(
    "{\n"
    ".reg .b32 t<4>, u, c;\n"
    "mov.b32 c, 0x7E807E80;\n" + _WORD_PLACE + "mul.rn.bf16x2 t0, t0, c;\n"
    "mul.rn.bf16x2 t1, t1, c;\n"
    "mul.rn.bf16x2 t2, t2, c;\n"
    "mul.rn.bf16x2 t3, t3, c;\n" + _WORD_SCALE_OUT
)


@triton.jit
def e8m0_to_bf16x2_bits(s):
    """uint8 E8M0 -> int32 holding bf16 2**(s-127) in both halves (the word decode's scale operand)."""
    one = e8m0_to_bf16(s).to(tl.uint16, bitcast=True).to(tl.uint32)
    return (one | (one << 16)).to(tl.int32, bitcast=True)


@triton.jit
def mxfp4_words_bf16(words, scales, R: tl.constexpr, C: tl.constexpr, ASM: tl.constexpr):
    """int32 words [R, C/8] (8 codes each, little-endian bytes) + E8M0 [R, C/32] -> 8 bf16 tensors [R, C/8]:
    output i holds K positions 8j + i. ASM=True is inline PTX (sm90); ASM=False exact Triton (interpreter)."""
    if ASM:
        sc = e8m0_to_bf16x2_bits(scales)
        sc = tl.broadcast_to(sc[:, :, None], (R, C // 32, 4)).reshape(R, C // 8)
        v0, v1, v2, v3, v4, v5, v6, v7 = tl.inline_asm_elementwise(
            E2M1_WORD_ASM, "=h,=h,=h,=h,=h,=h,=h,=h,r,r", [words, sc], dtype=(tl.bfloat16,) * 8, is_pure=True,
            pack=1)  # fmt: skip
    else:
        w = words.to(tl.uint32, bitcast=True)
        sf = e8m0_to_f32(scales)
        sf = tl.broadcast_to(sf[:, :, None], (R, C // 32, 4)).reshape(R, C // 8)
        v0 = (e2m1_to_f32(w & 0xF) * sf).to(tl.bfloat16)
        v1 = (e2m1_to_f32((w >> 4) & 0xF) * sf).to(tl.bfloat16)
        v2 = (e2m1_to_f32((w >> 8) & 0xF) * sf).to(tl.bfloat16)
        v3 = (e2m1_to_f32((w >> 12) & 0xF) * sf).to(tl.bfloat16)
        v4 = (e2m1_to_f32((w >> 16) & 0xF) * sf).to(tl.bfloat16)
        v5 = (e2m1_to_f32((w >> 20) & 0xF) * sf).to(tl.bfloat16)
        v6 = (e2m1_to_f32((w >> 24) & 0xF) * sf).to(tl.bfloat16)
        v7 = (e2m1_to_f32((w >> 28) & 0xF) * sf).to(tl.bfloat16)
    return v0, v1, v2, v3, v4, v5, v6, v7


@triton.jit
def split_k_octets(x, R: tl.constexpr, C: tl.constexpr):
    """[R, C] -> 8 tensors [R, C/8], output i = columns 8j + i: the partner of mxfp4_words_bf16."""
    a, b = tl.split(x.reshape(R, C // 8, 2, 2, 2))  # last axis: bit 0 of i
    a0, a1 = tl.split(a)  # bit 1
    b0, b1 = tl.split(b)
    x0, x4 = tl.split(a0)  # bit 2
    x2, x6 = tl.split(a1)
    x1, x5 = tl.split(b0)
    x3, x7 = tl.split(b1)
    return x0, x1, x2, x3, x4, x5, x6, x7


# swz128 value layout (mx.layout): one 32-bit word = 8 codes of one scale group in the "rot" bit encoding, slots i
# and i + 4 an MMA pair. Pairs 0..2 are one rotate + AND each, pair 3 two rotates, an AND and a LOP3 (9 integer ops
# per 8 codes instead of 14), then 4 HMUL2. The PTX is generated from mx.layout's constants, which the Triton path
# below (interpreter, tests) applies with the same operations.
def _rot_place() -> str:
    lines = [f"and.b32 t0, $8, {PAIR_MASK:#010x};\n"]
    for j in (1, 2):
        lines += [f"shf.l.wrap.b32 t{j}, $8, $8, {ROT[j]};\n", f"and.b32 t{j}, t{j}, {PAIR_MASK:#010x};\n"]
    (ra, ma), (rb, mb) = SPLIT3
    lines += [f"shf.l.wrap.b32 a, $8, $8, {ra};\n", f"shf.l.wrap.b32 b, $8, $8, {rb};\n",
              f"and.b32 a, a, {ma:#010x};\n", f"and.b32 b, b, {mb:#010x};\n", "or.b32 t3, a, b;\n"]  # fmt: skip
    return "".join(lines)


_ROT_HEAD = "{\n.reg .b32 t<4>, a, b, c;\n" + _rot_place()
# WORD1: the 2**126 and the scale folded into one bf16x2 multiply by 2**(s - 1): exact when that constant is a normal
# bf16, i.e. every E8M0 s <= 128 (scale <= 2; checked at load time), and then its bits are (s + 126) << 7 per half.
E2M1_SWZ1_ASM: tl.constexpr = tl.constexpr(_ROT_HEAD + _WORD_SCALE_OUT)
E2M1_SWZ_ASM: tl.constexpr = tl.constexpr(
    _ROT_HEAD + "mov.b32 c, 0x7E807E80;\n"
    "mul.rn.bf16x2 t0, t0, c;\n"
    "mul.rn.bf16x2 t1, t1, c;\n"
    "mul.rn.bf16x2 t2, t2, c;\n"
    "mul.rn.bf16x2 t3, t3, c;\n" + _WORD_SCALE_OUT
)
_R1: tl.constexpr = tl.constexpr(ROT[1])
_R2: tl.constexpr = tl.constexpr(ROT[2])
_R3A: tl.constexpr = tl.constexpr(SPLIT3[0][0])
_R3B: tl.constexpr = tl.constexpr(SPLIT3[1][0])
_PAIR: tl.constexpr = tl.constexpr(PAIR_MASK)
_M3A: tl.constexpr = tl.constexpr(SPLIT3[0][1])
_M3B: tl.constexpr = tl.constexpr(SPLIT3[1][1])


@triton.jit
def _rotl(x, r: tl.constexpr):
    return (x << r) | (x >> (32 - r))


@triton.jit
def _pair_bf16(t, sf):
    """uint32 pair of placed codes (m, e0, e1, s at bits 6, 7, 8, 15 of each half) -> (low, high) bf16 values times
    sf (fp32). The codes are read back from the placed bits: the interpreter flushes the bf16 subnormal the PTX's
    multiply by 2**126 relies on (code 0.5), so it cannot take that last step itself."""
    lo = ((t >> 6) & 7) | ((t >> 12) & 8)
    hi = ((t >> 22) & 7) | ((t >> 28) & 8)
    return (e2m1_to_f32(lo) * sf).to(tl.bfloat16), (e2m1_to_f32(hi) * sf).to(tl.bfloat16)


@triton.jit
def _words_scaled_bf16(words, sc_words, ASM: tl.constexpr, MUL1: tl.constexpr):
    """int32 words (rot encoding) + one E8M0 uint8 per word (same shape) -> 8 bf16 tensors, output i = slot i.
    MUL1 (with ASM): the one-multiply decode, valid only when every scale byte is <= 128."""
    if ASM:
        if MUL1:
            c = ((sc_words.to(tl.uint32) + 126) * 0x00800080).to(tl.int32, bitcast=True)
            v0, v1, v2, v3, v4, v5, v6, v7 = tl.inline_asm_elementwise(
                E2M1_SWZ1_ASM, "=h,=h,=h,=h,=h,=h,=h,=h,r,r", [words, c], dtype=(tl.bfloat16,) * 8,
                is_pure=True, pack=1)  # fmt: skip
        else:
            v0, v1, v2, v3, v4, v5, v6, v7 = tl.inline_asm_elementwise(
                E2M1_SWZ_ASM, "=h,=h,=h,=h,=h,=h,=h,=h,r,r", [words, e8m0_to_bf16x2_bits(sc_words)],
                dtype=(tl.bfloat16,) * 8, is_pure=True, pack=1)  # fmt: skip
    else:  # the same placement in Triton integer ops
        x = words.to(tl.uint32, bitcast=True)
        sf = e8m0_to_f32(sc_words)
        v0, v4 = _pair_bf16(x & _PAIR, sf)
        v1, v5 = _pair_bf16(_rotl(x, _R1) & _PAIR, sf)
        v2, v6 = _pair_bf16(_rotl(x, _R2) & _PAIR, sf)
        v3, v7 = _pair_bf16((_rotl(x, _R3A) & _M3A) | (_rotl(x, _R3B) & _M3B), sf)
    return v0, v1, v2, v3, v4, v5, v6, v7


@triton.jit
def swz_word_scale_cols(k0, C: tl.constexpr):
    """Scale column of each word of a swz128 tile at K offset k0 (word 4c + w of a chunk -> group w): loading the
    scales with these columns gives them the words' own layout (4 contiguous bytes per row, no redistribution)."""
    j = tl.arange(0, C // 8)
    return k0 // 32 + (j // 16) * 4 + (j % 4)


@triton.jit
def swz_tile_ptrs(base, rows, k0, row_stride, C: tl.constexpr, G: tl.constexpr, SCALES: tl.constexpr = False):
    """Pointers [R, C/8] to a swz128 tile's words (SCALES: to each word's scale byte, swz_word_scale_cols) at K
    offset k0 (a multiple of 128) for rows stored in groups of G (mx.layout `group_rows`: a chunk's unit of a row is
    16 words or 4 scale bytes); G = 1 is row-major. The grouped column part is built from arange alone so that
    Triton's axis analysis sees 16-byte runs, as it does row-major (k0 % U would hide them: narrower loads, other
    layouts, shared-memory round trips)."""
    if G == 1:
        cols = swz_word_scale_cols(k0, C) if SCALES else k0 // 8 + tl.arange(0, C // 8)
        return base + rows[:, None] * row_stride + cols[None, :]
    U: tl.constexpr = 4 if SCALES else 16
    j = tl.arange(0, C // 8)
    col = (k0 // 128) * (G * U) + (j // 16) * (G * U) + j % U  # word 4c + w's scale: group w = j % 4
    return base + ((rows // G) * (G * row_stride) + (rows % G) * U)[:, None] + col[None, :]


@triton.jit
def swz_unit_ptrs(base, rows, c0, row_stride, CHUNKS: tl.constexpr, G: tl.constexpr):
    """Byte pointers [R, CHUNKS] to the first byte of rows' 128-code chunks c0 .. c0 + CHUNKS - 1 in a swz128
    layout (64 bytes a row and chunk; `row_stride` in bytes) with rows in groups of G (G = 1: row-major), or in
    plain row-major codes (G = 1 too: a chunk's 64 bytes sit at 64 * chunk). For L2 prefetches (overlays/pdl.py)."""
    r = rows.to(tl.int64)[:, None]
    c = (c0 + tl.arange(0, CHUNKS))[None, :]
    if G == 1:
        return base + r * row_stride + c * 64
    return base + (r // G) * (G * row_stride) + (r % G) * 64 + c * (G * 64)


@triton.jit
def mxfp4_swz_words_bf16(words, sc_words, R: tl.constexpr, C: tl.constexpr, ASM: tl.constexpr,
                         MUL1: tl.constexpr = False):  # fmt: skip
    """swz128 words int32 [R, C/8] + E8M0 per word uint8 [R, C/8] (see swz_word_scale_cols) -> bf16 [R, C] in
    plain k order (C % 128 == 0). Only joins, reshapes and one permute after the per-word decode: with the tile
    feeding an MMA's register operand, Triton's layouts map each lane's loaded words onto its fragment."""
    KC: tl.constexpr = C // 128
    v0, v1, v2, v3, v4, v5, v6, v7 = _words_scaled_bf16(words, sc_words, ASM, MUL1)
    x = tl.join(tl.join(tl.join(v0, v1), tl.join(v2, v3)), tl.join(tl.join(v4, v5), tl.join(v6, v7)))
    x = x.reshape(R, KC, 4, 4, 2, 2, 2)  # (row, chunk, c, w, h, u, t): nibble 4t + 2u + h of word 4c + w
    x = tl.permute(x, (0, 1, 3, 5, 4, 2, 6))  # -> (row, chunk, w, u, h, c, t): k = 32w + 16u + 8h + 2c + t
    return x.reshape(R, C)


@triton.jit
def mxfp4_swz_bf16(words, scales, R: tl.constexpr, C: tl.constexpr, ASM: tl.constexpr):
    """swz128 words int32 [R, C/8] + plain E8M0 [R, C/32] -> bf16 [R, C] in plain k order (C % 128 == 0)."""
    KC: tl.constexpr = C // 128
    sc = tl.broadcast_to(tl.reshape(scales, (R, KC, 1, 4)), (R, KC, 4, 4)).reshape(R, C // 8)
    return mxfp4_swz_words_bf16(words, sc, R, C, ASM)
