"""Reference MXFP4 activation quantizer (torch), bit-exact with what SGLang 0.5.17 runs on ROCm.

SGLang's quark `w_mxfp4_a_mxfp4` linear (QuarkW4A4MXFP4.apply_weights) quantizes activations with aiter's
`dynamic_mxfp4_quant` (aiter.ops.triton.quant, `_mxfp4_quant_op`, round-to-nearest-even since aiter #975).
The rule, per block of 32 consecutive elements along the last axis, computed in float32:

1. Scale. amax = max |x|. Round amax to a power of two on its bit pattern: add 0x200000 to the fp32 bits
   and clear the mantissa (so amax rounds UP to the next power of two only when its mantissa is >= 1.75).
   E = clamp(floor(log2(that)) - 2, -127, 127); scale byte = E + 127 (E8M0, value 2**E).
   An all-zero block gets E = -127 (byte 0); an infinite amax gets E = 127 (byte 254).
2. Elements. q = x * 2**-E (exact). |q| >= 6 saturates to 6 (code 7). |q| < 1 rounds to a multiple of 0.5
   with ties to even (0.25 -> 0, 0.75 -> 1.0). 1 <= |q| < 6 rounds to one mantissa bit, ties to even
   (1.25 -> 1.0, 1.75 -> 2.0, 2.5 -> 2.0, 3.5 -> 4.0, 5.0 -> 4.0). The sign is kept in bit 3 even when the
   magnitude rounds to zero (-0.1 -> code 8).
3. Layout. Codes packed two per byte, element 2i in the low nibble; scales one byte per block.

aiter returns the scales as a column-major view of shape [M, K/32]; the values are what matter, and this
function returns them contiguous. NaN inputs are unspecified (aiter's own max/compare handling decides), and
bf16 subnormal inputs (|x| < 2**-126) may be flushed by GPU hardware, so exactness is claimed for normal inputs.
Checked: 0 mismatches against aiter's `_mxfp4_quant_op` (run under TRITON_INTERPRET) on 20 x 64 x 256 values
with scales 2**-135..2**120 and many exact ties, once subnormal-input blocks are excluded.
"""

from __future__ import annotations

import torch

from speedrun.overlays.mx.format import BLOCK, pack_e2m1


def _f32_bits(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF


def scale_exponent(amax: torch.Tensor) -> torch.Tensor:
    """float32 block amax -> unbiased E8M0 exponent E (int32), the reference rounding."""
    bits = (_f32_bits(amax) + 0x200000) & 0xFF800000
    field = (bits >> 23) & 0xFF
    exp = field - 127 - 2
    exp = torch.where(field == 255, torch.full_like(exp, 127), exp)  # inf (and NaN) amax
    return exp.clamp(-127, 127).to(torch.int32)


def _pow2(exp: torch.Tensor) -> torch.Tensor:
    """2**exp as float32 for integer exp in [-127, 127], built from bits so it is exact."""
    e = exp.to(torch.int64)
    bits = torch.where(e >= -126, (e + 127) << 23, torch.full_like(e, 0x00400000))  # 2**-127 is subnormal
    return bits.to(torch.int32).view(torch.float32)


def e2m1_codes(q: torch.Tensor) -> torch.Tensor:
    """float32 values already divided by their block scale -> E2M1 codes 0..15 (uint8), RNE + saturation."""
    bits = _f32_bits(q.to(torch.float32))
    sign = (bits >> 28) & 0x8
    mag_bits = bits & 0x7FFFFFFF
    mag = mag_bits.to(torch.int32).view(torch.float32)
    # |q| < 1: adding 2**22 leaves |q| rounded (RNE) to a multiple of 0.5 in the low mantissa bits.
    denorm = _f32_bits(mag + 4194304.0) - 0x4A800000  # bits of 2**22
    # 1 <= |q| < 6: round to one mantissa bit, ties to even, and rebias the exponent from 127 to 1.
    odd = (mag_bits >> 22) & 1
    normal = (mag_bits - (126 << 23) + 0x1FFFFF + odd) >> 22
    code = torch.where(mag < 1.0, denorm, normal)
    code = torch.where(mag >= 6.0, torch.full_like(code, 7), code)
    return (code | sign).to(torch.uint8)


def quant_mxfp4(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., K] (bf16/fp16/fp32, K % 32 == 0) -> (packed uint8 [..., K/2], E8M0 scales uint8 [..., K/32])."""
    k = x.shape[-1]
    if k % BLOCK:
        raise ValueError(f"quant_mxfp4 needs K % {BLOCK} == 0, got K={k}")
    blocks = x.to(torch.float32).unflatten(-1, (k // BLOCK, BLOCK))
    exp = scale_exponent(blocks.abs().amax(dim=-1))
    q = blocks * _pow2(-exp).unsqueeze(-1)
    codes = e2m1_codes(q).flatten(-2)
    return pack_e2m1(codes), (exp + 127).to(torch.uint8)


def qdq_mxfp4(x: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """dequant(quant_mxfp4(x)): the activation values the MXFP4 GEMM actually multiplies."""
    from speedrun.overlays.mx.format import dequant_mxfp4

    packed, scales = quant_mxfp4(x)
    return dequant_mxfp4(packed, scales, dtype)
