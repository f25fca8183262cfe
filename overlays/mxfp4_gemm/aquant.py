"""MXFP4 quantize-dequantize of a bf16 activation tile in registers: the fused A load of the sm90 GEMM.

Same values as `mx.quant.qdq_mxfp4` (the reference rule) for finite inputs below 2**100 in magnitude, with a
fraction of the instructions of `mx.triton_helpers.qdq_mxfp4_bf16` (which builds each code on fp32 bits and
scales twice). The rule, per block of 32 along K, once the block's exponent E is known (reference step 1):
every element rounds to a multiple of u = 2**(max(e, E) - 1), e its own exponent, ties to even, then
saturates at 6 * 2**E, sign kept. Why that is the reference's E2M1 rounding of q = x / 2**E: for |q| >= 1
(e >= E) a multiple of 2**(e-1) keeps one mantissa bit; for |q| < 1 a multiple of 2**(E-1) is a multiple of
0.5 in q; |q| < 7 always (the amax rounding keeps it there), so q in [6, 8) saturates to 6 as the rule does.
Rounding to a multiple of u is (x + c) - c with c = 1.5 * 2**p * u, p the significand width: both adds are
exact except the one rounding wanted, RNE like the reference, and c is an even multiple of u so ties go to
the even multiple of u. On sm90 the two adds are one bf16x2 pair (p = 7, both halves of a register at once),
the exponent max and the saturation are 16-bit integer min/max on the bit patterns (non-negative floats order
like their bits), and the sign is OR-ed back (so -0.1 * 2**E gives -0.0, code 8, as the reference).
8 instructions per 2 elements after the block amax, instead of ~30.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

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
def _qdq_rows_kernel(x_ptr, o_ptr, R: tl.constexpr, ASM: tl.constexpr):
    rows = tl.program_id(0) * R + tl.arange(0, R)[:, None]
    offs = rows * 64 + tl.arange(0, 64)[None, :]
    tl.store(o_ptr + offs, qdq_mxfp4_fast(tl.load(x_ptr + offs), R, 64, ASM))


def qdq_blocks(blocks: torch.Tensor, asm: bool) -> torch.Tensor:
    """qdq_mxfp4_fast on bf16 [B, 32] blocks (checks against the reference; two blocks per 64-wide row, 16 rows
    per program). asm: the sm90 PTX (CUDA only)."""
    x = torch.nn.functional.pad(blocks.reshape(-1), (0, -blocks.numel() % 1024)).view(-1, 64).contiguous()
    out = torch.empty_like(x)
    _qdq_rows_kernel[(x.shape[0] // 16,)](x, out, 16, asm)
    return out.reshape(-1)[: blocks.numel()].view_as(blocks)
