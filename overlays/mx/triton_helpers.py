"""Triton device functions for MXFP4, shared by the MXFP4 GEMM and MoE kernels.

All operate on register tiles whose last axis is K (a multiple of 32); R and C are the tile shape (constexpr).
- `mxfp4_to_bf16(packed, scales, R, C)`: packed E2M1 [R, C/2] + E8M0 [R, C/32] -> bf16 [R, C] (sm90 path).
- `quant_mxfp4(x, R, C)`: fp32 [R, C] -> (packed uint8 [R, C/2], scales uint8 [R, C/32]), bit-exact with
  `speedrun.overlays.mx.quant.quant_mxfp4` (the rule is stated there).
- `qdq_mxfp4_bf16(x, R, C)`: fp32 [R, C] -> bf16 dequant(quant(x)) without building codes (the fused
  activation-quant path of the dequant GEMM; same values as quant_mxfp4 then mxfp4_to_bf16).
Decoding is exact (values are built from bits, no exp2/log2 approximations), so every path agrees bitwise.
"""

from __future__ import annotations

import triton
import triton.language as tl


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
