"""MXFP4 numerics: the torch quantizer against hand-computed cases and an independent brute force, and the
Triton device helpers (under TRITON_INTERPRET=1) bitwise against the torch reference."""

from __future__ import annotations

import math
import os

import torch

# The interpreter only where there is no GPU: TRITON_INTERPRET is read when kernels are decorated, so setting it
# in a process that also runs GPU tests would turn their kernels into interpreted ones.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
DEV = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"

import pytest  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from speedrun.overlays.mx import triton_helpers as th  # noqa: E402
from speedrun.overlays.mx.format import E2M1_VALUES, dequant_mxfp4, pack_e2m1  # noqa: E402
from speedrun.overlays.mx.quant import e2m1_codes, qdq_mxfp4, quant_mxfp4, scale_exponent  # noqa: E402

MAGS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def _all_bf16() -> torch.Tensor:
    """Every finite bf16 value, as float32."""
    vals = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).float()
    return vals[torch.isfinite(vals)]


def _brute_code(v: float) -> int:
    """Nearest E2M1 magnitude, ties to the even code, saturating; sign in bit 3."""
    m = min(abs(v), 6.0)  # saturation
    best = min(range(8), key=lambda c: (abs(MAGS[c] - m), c & 1))
    return best | (8 if math.copysign(1.0, v) < 0 else 0)


def _brute_exp(amax: float) -> int:
    if amax == 0:
        return -127
    if math.isinf(amax):
        return 127
    frac, e = math.frexp(amax)  # amax = frac * 2**e, frac in [0.5, 1)
    return max(-127, min(127, (e - 1) + (1 if frac >= 0.875 else 0) - 2))


# ----------------------------------------------------------------------------- torch reference


def test_codes_hand_cases():
    cases = [(0.0, 0), (0.25, 0), (0.26, 1), (0.5, 1), (0.75, 2), (1.25, 2), (1.26, 3), (1.75, 4), (2.5, 4),
             (3.5, 6), (5.0, 6), (5.01, 7), (6.0, 7), (100.0, 7), (-0.1, 8), (-0.75, 10), (-3.0, 13), (-5.5, 15),
             (-0.0, 8)]  # fmt: skip
    got = e2m1_codes(torch.tensor([v for v, _ in cases])).tolist()
    assert got == [c for _, c in cases]


def test_scale_exponent_hand_cases():
    amax = torch.tensor([0.0, 1.0, 1.74, 1.75, 6.0, 7.0, 8.0, 448.0, 2.0**-130, float("inf")])
    assert scale_exponent(amax).tolist() == [-127, -2, -2, -1, 0, 1, 1, 7, -127, 127]


def test_quant_block_hand_case():
    # amax 7 = 1.75 * 4 rounds up to 8 -> E = 1; q = x / 2.
    x = torch.zeros(64)
    x[:8] = torch.tensor([7.0, -5.0, 2.5, 1.5, 0.5, -0.4, 3.0, 0.0])
    packed, scales = quant_mxfp4(x.to(torch.bfloat16))
    # q: 3.5->4.0(6) -2.5->-2.0(12) 1.25->1.0(2) 0.75->1.0(2) 0.25->0(0) -0.2->-0(8) 1.5(3) 0(0)
    assert packed[:4].tolist() == [6 | 12 << 4, 2 | 2 << 4, 0 | 8 << 4, 3 | 0 << 4]
    assert scales.tolist() == [128, 0]  # second block is all zeros -> E = -127
    assert packed[16:].eq(0).all()


def test_codes_exhaustive_bf16():
    vals = _all_bf16()
    got = e2m1_codes(vals)
    want = torch.tensor([_brute_code(v) for v in vals.tolist()], dtype=torch.uint8)
    assert torch.equal(got, want)


def test_scale_exponent_random():
    g = torch.Generator().manual_seed(0)
    amax = (torch.rand(4096, generator=g) * 2.0 ** torch.randint(-140, 120, (4096,), generator=g)).float()
    amax[:4] = torch.tensor([1.75, 1.7499999, 3.5, 2.0**-126])
    want = [_brute_exp(a) for a in amax.tolist()]
    assert scale_exponent(amax).tolist() == want


def test_quant_roundtrip_error_bound():
    x = torch.randn(8, 256, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    packed, scales = quant_mxfp4(x)
    assert packed.shape == (8, 128) and scales.shape == (8, 8)
    deq = dequant_mxfp4(packed, scales)
    amax = x.float().unflatten(-1, (8, 32)).abs().amax(-1, keepdim=True)
    err = (deq - x.float()).unflatten(-1, (8, 32)).abs()
    assert (err <= amax / 4 + 1e-6).all()  # half a step of the coarsest E2M1 spacing (2 * 2**E <= amax/2)


# ----------------------------------------------------------------------------- Triton helpers (interpreter)


@triton.jit
def _quant_kernel(x_ptr, p_ptr, s_ptr, q_ptr, R: tl.constexpr, C: tl.constexpr):
    r = tl.arange(0, R)[:, None]
    x = tl.load(x_ptr + r * C + tl.arange(0, C)[None, :]).to(tl.float32)
    packed, scales = th.quant_mxfp4(x, R, C)
    tl.store(p_ptr + r * (C // 2) + tl.arange(0, C // 2)[None, :], packed)
    tl.store(s_ptr + r * (C // 32) + tl.arange(0, C // 32)[None, :], scales)
    tl.store(q_ptr + r * C + tl.arange(0, C)[None, :], th.qdq_mxfp4_bf16(x, R, C))


@triton.jit
def _dequant_kernel(p_ptr, s_ptr, o_ptr, R: tl.constexpr, C: tl.constexpr):
    r = tl.arange(0, R)[:, None]
    packed = tl.load(p_ptr + r * (C // 2) + tl.arange(0, C // 2)[None, :])
    scales = tl.load(s_ptr + r * (C // 32) + tl.arange(0, C // 32)[None, :])
    tl.store(o_ptr + r * C + tl.arange(0, C)[None, :], th.mxfp4_to_bf16(packed, scales, R, C))


@triton.jit
def _round_kernel(q_ptr, c_ptr, v_ptr, N: tl.constexpr):
    offs = tl.arange(0, N)
    q = tl.load(q_ptr + offs)
    tl.store(c_ptr + offs, th.e2m1_round(q).to(tl.uint8))
    tl.store(v_ptr + offs, th.e2m1_round_value(q))


def _activations(rows: int, cols: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(rows, cols // 32, 32, generator=g)
    x = (x * 2.0 ** torch.randint(-20, 20, (rows, cols // 32, 1), generator=g)).reshape(rows, cols)
    x[0, :32] = 0.0  # all-zero block
    x[1, :32] = torch.linspace(-7.0, 7.0, 32)  # amax 7 rounds the scale up
    x[1, 32:64] = torch.tensor([6.0, 5.0, 3.5, 2.5, 1.25, 0.75, 0.25, -0.25] * 4)  # exact ties
    x[2, :32] = 1e-38  # tiny block: E clamps at -127
    return x.to(torch.bfloat16)


@pytest.mark.parametrize("rows,cols", [(8, 64), (4, 128)])
def test_triton_quant_matches_reference(rows: int, cols: int):
    x = _activations(rows, cols)
    packed = torch.empty(rows, cols // 2, dtype=torch.uint8, device=DEV)
    scales = torch.empty(rows, cols // 32, dtype=torch.uint8, device=DEV)
    qdq = torch.empty(rows, cols, dtype=torch.bfloat16, device=DEV)
    _quant_kernel[(1,)](x.to(DEV), packed, scales, qdq, rows, cols)
    packed, scales, qdq = packed.cpu(), scales.cpu(), qdq.cpu()
    want_p, want_s = quant_mxfp4(x)
    assert torch.equal(scales, want_s)
    assert torch.equal(packed, want_p)
    want = qdq_mxfp4(x)
    normal = (want.float().abs() >= 2.0**-126) | (want == 0)  # the interpreter's fp32->bf16 cast mangles subnormals
    assert torch.equal(qdq.view(torch.int16)[normal], want.view(torch.int16)[normal])
    assert normal.float().mean() > 0.9


def test_triton_dequant_matches_format():
    g = torch.Generator().manual_seed(3)
    packed = torch.randint(0, 256, (8, 64), dtype=torch.uint8, generator=g)
    scales = torch.randint(100, 140, (8, 4), dtype=torch.uint8, generator=g)
    out = torch.empty(8, 128, dtype=torch.bfloat16, device=DEV)
    _dequant_kernel[(1,)](packed.to(DEV), scales.to(DEV), out, 8, 128)
    assert torch.equal(out.cpu(), dequant_mxfp4(packed, scales, torch.bfloat16))


def test_triton_round_exhaustive_bf16():
    vals = _all_bf16()
    n = 1 << (len(vals) - 1).bit_length()
    q = torch.zeros(n)
    q[: len(vals)] = vals
    codes = torch.empty(n, dtype=torch.uint8, device=DEV)
    values = torch.empty(n, device=DEV)
    _round_kernel[(1,)](q.to(DEV), codes, values, n)
    codes, values = codes.cpu(), values.cpu()
    want = e2m1_codes(q)
    assert torch.equal(codes, want)
    table = torch.tensor(E2M1_VALUES)
    assert torch.equal(values.view(torch.int32), table[want.long()].view(torch.int32))


def test_pack_layout_low_nibble_first():
    assert pack_e2m1(torch.tensor([1, 2, 15, 0])).tolist() == [0x21, 0x0F]


# ----------------------------------------------------------------------------- fast decode (mxfp4_halves_bf16)


def _emulate_e2m1_asm(packed: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The PTX of th.E2M1_BF16_ASM step by step in torch (the CPU cannot run it): bytes [b0 b1 b2 b3] ->
    prmt to 16-bit halves, nibble mask, x * 0x1040 (or 0x104), mask 0x81C081C0, bf16 * 2**126, bf16 * scale."""
    b = packed.to(torch.int64)  # one 16-bit half per byte: prmt 0x4140/0x4342 puts byte k at half k % 2
    lo = (((b & 0xF) * 0x1040) & 0x81C0).to(torch.int32)
    hi = (((b & 0xF0) * 0x104) & 0x81C0).to(torch.int32)
    scale = e8m0_bits(scales).to(torch.int32).to(torch.int16).view(torch.bfloat16)

    def finish(bits: torch.Tensor) -> torch.Tensor:
        x = bits.to(torch.int16).view(torch.bfloat16)
        y = (x.float() * 2.0**126).to(torch.bfloat16)  # exact: E2M1 values are normal bf16
        return (y.float() * scale.float()).to(torch.bfloat16)

    return finish(lo), finish(hi)


def e8m0_bits(s: torch.Tensor) -> torch.Tensor:
    """th.e8m0_to_bf16 in torch: bf16 bits of 2**(s-127) (0 -> subnormal 2**-127, 255 -> NaN)."""
    si = s.to(torch.int32)
    bits = torch.where(si == 0, torch.full_like(si, 0x40), si << 7)
    return torch.where(si == 255, torch.full_like(si, 0x7FC0), bits)


def test_e2m1_asm_bit_trick_is_exact_for_every_byte_and_scale():
    """Every packed byte x every E8M0 scale 1..254: the asm's bit placement equals the reference dequant bitwise."""
    packed = torch.arange(256, dtype=torch.uint8).repeat_interleave(254)
    scales = torch.arange(1, 255, dtype=torch.uint8).repeat(256)
    lo, hi = _emulate_e2m1_asm(packed, scales)
    ref = torch.stack((E2M1_VALUES_T[packed.long() & 15], E2M1_VALUES_T[packed.long() >> 4]), -1)
    ref = (ref * torch.exp2(scales.float() - 127)[:, None]).to(torch.bfloat16)
    got = torch.stack((lo, hi), -1)
    normal = (ref.float().abs() >= 2.0**-126) | (ref == 0)
    assert torch.equal(got.view(torch.int16)[normal], ref.view(torch.int16)[normal])
    assert normal.float().mean() > 0.95


E2M1_VALUES_T = torch.tensor(E2M1_VALUES)


@triton.jit
def _halves_kernel(p_ptr, s_ptr, lo_ptr, hi_ptr, R: tl.constexpr, C: tl.constexpr):
    r = tl.arange(0, R)[:, None]
    packed = tl.load(p_ptr + r * (C // 2) + tl.arange(0, C // 2)[None, :])
    scales = tl.load(s_ptr + r * (C // 32) + tl.arange(0, C // 32)[None, :])
    lo, hi = th.mxfp4_halves_bf16(packed, scales, R, C, DEV == "cuda")
    tl.store(lo_ptr + r * (C // 2) + tl.arange(0, C // 2)[None, :], lo)
    tl.store(hi_ptr + r * (C // 2) + tl.arange(0, C // 2)[None, :], hi)


def test_triton_halves_match_format():
    """mxfp4_halves_bf16 (exact Triton under the interpreter, inline PTX on a CUDA GPU) = even / odd K of dequant."""
    g = torch.Generator().manual_seed(4)
    packed = torch.randint(0, 256, (8, 64), dtype=torch.uint8, generator=g)
    scales = torch.randint(100, 140, (8, 4), dtype=torch.uint8, generator=g)
    lo = torch.empty(8, 64, dtype=torch.bfloat16, device=DEV)
    hi = torch.empty_like(lo)
    _halves_kernel[(1,)](packed.to(DEV), scales.to(DEV), lo, hi, 8, 128)
    want = dequant_mxfp4(packed, scales, torch.bfloat16)
    assert torch.equal(lo.cpu(), want[:, 0::2])
    assert torch.equal(hi.cpu(), want[:, 1::2])


def _emulate_word_asm(words: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """th.E2M1_WORD_ASM in torch: int32 words -> [..., 8] bf16 (output i = nibble i), per-pair masks and shifts."""
    w = words.to(torch.int64) & 0xFFFFFFFF
    pairs = {0: ((w & 0x000F000F) * 0x1040), 1: ((w & 0x00F000F0) * 0x104),
             2: (((w & 0x0F000F00) >> 2) * 0x41), 3: ((w & 0xF000F000) | ((w & 0xF000F000) >> 6))}  # fmt: skip
    scale = e8m0_bits(scales).to(torch.int16).view(torch.bfloat16).float()
    out = [None] * 8
    for p, v in pairs.items():
        v = v & 0x81C081C0
        for half, i in ((v & 0xFFFF, p), ((v >> 16) & 0xFFFF, p + 4)):
            x = half.to(torch.int32).to(torch.int16).view(torch.bfloat16).float()
            out[i] = ((x * 2.0**126).to(torch.bfloat16).float() * scale).to(torch.bfloat16)
    return torch.stack(out, -1)


def test_e2m1_word_asm_bit_trick_is_exact():
    """The word decode's per-pair shifts, on random words under every scale 1..254, equal the reference bitwise."""
    g = torch.Generator().manual_seed(6)
    words = torch.randint(-(2**31), 2**31, (254 * 64,), dtype=torch.int64, generator=g).to(torch.int32)
    scales = torch.arange(1, 255, dtype=torch.uint8).repeat_interleave(64)
    got = _emulate_word_asm(words, scales)
    packed = words.view(torch.uint8).view(-1, 4)  # little-endian: nibble 2b of the word = low nibble of byte b
    ref = dequant_mxfp4(packed.repeat(1, 4), scales[:, None], torch.bfloat16)[:, :8]
    normal = (ref.float().abs() >= 2.0**-126) | (ref == 0)
    assert normal.float().mean() > 0.95
    assert torch.equal(got.view(torch.int16)[normal], ref.view(torch.int16)[normal])


@triton.jit
def _words_kernel(w_ptr, s_ptr, o_ptr, R: tl.constexpr, C: tl.constexpr):
    r = tl.arange(0, R)[:, None]
    words = tl.load(w_ptr + r * (C // 8) + tl.arange(0, C // 8)[None, :])
    scales = tl.load(s_ptr + r * (C // 32) + tl.arange(0, C // 32)[None, :])
    vals = th.mxfp4_words_bf16(words, scales, R, C, DEV == "cuda")
    j = tl.arange(0, C // 8)[None, :] * 8
    for i in tl.static_range(8):
        tl.store(o_ptr + r * C + j + i, vals[i])


def test_triton_words_match_format():
    """mxfp4_words_bf16 (exact Triton under the interpreter, inline PTX on a CUDA GPU) = dequant, K = 8j + i."""
    g = torch.Generator().manual_seed(7)
    packed = torch.randint(0, 256, (4, 64), dtype=torch.uint8, generator=g)
    scales = torch.randint(100, 140, (4, 4), dtype=torch.uint8, generator=g)
    out = torch.empty(4, 128, dtype=torch.bfloat16, device=DEV)
    _words_kernel[(1,)](packed.view(torch.int32).to(DEV), scales.to(DEV), out, 4, 128)
    assert torch.equal(out.cpu(), dequant_mxfp4(packed, scales, torch.bfloat16))
