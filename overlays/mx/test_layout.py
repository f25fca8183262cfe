"""swz128 value layout (mx.layout): exact round trip, the stated formula checked element by element, padding."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():  # see test_mx.py: the interpreter only where there is no GPU
    os.environ.setdefault("TRITON_INTERPRET", "1")
DEV = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"

import pytest  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from speedrun.overlays.mx import triton_helpers as th  # noqa: E402
from speedrun.overlays.mx.format import dequant_mxfp4  # noqa: E402
from speedrun.overlays.mx.layout import (  # noqa: E402
    CHUNK,
    PAIR_MASK,
    ROT,
    SPLIT3,
    _decode_words,
    _encode_words,
    code_sources,
    group_rows,
    pad_scales,
    padded_k,
    swizzle_experts,
    swizzle_mxfp4,
    ungroup_rows,
    unswizzle_mxfp4,
)


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("k", [128, 256, 2880, 7168, 96])
def test_round_trip_exact(k: int) -> None:
    packed = _rand(3, 5, k // 2, seed=k)
    swz = swizzle_mxfp4(packed)
    assert swz.shape == (3, 5, padded_k(k) // 2) and swz.dtype == torch.uint8
    assert torch.equal(unswizzle_mxfp4(swz, k), packed)
    if k % CHUNK:  # padding codes are zero
        assert not torch.equal(swz, swizzle_mxfp4(_rand(3, 5, k // 2, seed=k + 1)))


def test_formula_of_the_docstring() -> None:
    """Code k of a row lands at word 4c + w, slot 4t + 2u + h of chunk k // 128 (k = 32w + 16u + 8h + 2c + t)."""
    k = 256
    for shift in (0, 4):  # two 4-bit digits of k: each position's code is pinned
        val = (torch.arange(k) >> shift) & 0xF
        packed = (val[0::2] | (val[1::2] << 4)).to(torch.uint8)[None]
        words = swizzle_mxfp4(packed)[0].view(torch.int32)
        for kk in range(k):
            ch, r = divmod(kk, CHUNK)
            w, u, h, c, t = r // 32, (r // 16) % 2, (r // 8) % 2, (r // 2) % 4, r % 2
            word = int(words[ch * 16 + 4 * c + w]) & 0xFFFFFFFF
            src = code_sources(4 * t + 2 * u + h)
            assert sum(((word >> s) & 1) << b for b, s in enumerate(src)) == int(val[kk]), (kk, shift)


def test_scales_and_experts() -> None:
    packed, scales = _rand(5, 3, 1440), _rand(5, 3, 90)
    swz, sp = swizzle_experts(packed, scales, chunk=2)
    assert torch.equal(swz, swizzle_mxfp4(packed))
    assert sp.shape == (5, 3, 96) and torch.equal(sp[..., :90], scales) and bool((sp[..., 90:] == 127).all())
    assert torch.equal(pad_scales(scales[..., :16]), scales[..., :16])
    assert pad_scales(scales[..., :4]).shape[-1] == 16 and pad_scales(scales[..., :4], align=4).shape[-1] == 4


@pytest.mark.parametrize("g,unit", [(16, 16), (64, 4), (1, 16)])
def test_row_groups_formula_and_inverse(g: int, unit: int) -> None:
    """group_rows keeps the shape and puts (r, c) at (r // G) G C + (c // U) G U + (r % G) U + c % U (the module
    docstring), ungroup_rows undoes it; rows or columns that do not fill the groups are a ValueError."""
    r, c = 128, 48
    t = torch.arange(2 * r * c, dtype=torch.int32).reshape(2, r, c)
    grouped = group_rows(t, g, unit)
    assert grouped.shape == t.shape and torch.equal(ungroup_rows(grouped, g, unit), t)
    rr, cc = torch.meshgrid(torch.arange(r), torch.arange(c), indexing="ij")
    at = (rr // g) * g * c + (cc // unit) * g * unit + (rr % g) * unit + cc % unit
    assert torch.equal(grouped[1].flatten()[at.flatten()].reshape(r, c), t[1])
    if g > 1:
        with pytest.raises(ValueError, match=f"row groups of {g} need rows"):
            group_rows(t[:, : g // 2], g, unit)


@triton.jit
def _decode_kernel(w_ptr, s_ptr, o_ptr, KP, stride_w, stride_s, R: tl.constexpr, C: tl.constexpr,
                   WORD_SCALES: tl.constexpr):  # fmt: skip
    r = tl.arange(0, R)
    k0 = tl.program_id(0) * C
    kw = k0 // 8 + tl.arange(0, C // 8)
    words = tl.load(w_ptr + r[:, None] * stride_w + kw[None, :])
    if WORD_SCALES:
        sc = tl.load(s_ptr + r[:, None] * stride_s + th.swz_word_scale_cols(k0, C)[None, :])
        v = th.mxfp4_swz_words_bf16(words, sc, R, C, False)
    else:
        ks = k0 // 32 + tl.arange(0, C // 32)
        v = th.mxfp4_swz_bf16(words, tl.load(s_ptr + r[:, None] * stride_s + ks[None, :]), R, C, False)
    kk = k0 + tl.arange(0, C)
    tl.store(o_ptr + r[:, None] * KP + kk[None, :], v)


@pytest.mark.parametrize("word_scales", [False, True])
@pytest.mark.parametrize("c", [128, 256])
def test_triton_decode_of_swz_tile_is_plain_dequant(word_scales: bool, c: int) -> None:
    """mxfp4_swz_(words_)bf16 on swz128 tiles == dequant_mxfp4 of the plain tensor, bitwise (exact path)."""
    r, k = 4, 512
    packed = _rand(r, k // 2, seed=c)
    g = torch.Generator().manual_seed(c + 1)
    scales = torch.randint(110, 135, (r, k // 32), generator=g, dtype=torch.uint8)
    words = swizzle_mxfp4(packed).view(torch.int32).to(DEV)
    sp = pad_scales(scales).to(DEV)
    out = torch.empty(r, k, dtype=torch.bfloat16, device=DEV)
    _decode_kernel[(k // c,)](words, sp, out, k, words.stride(0), sp.stride(0), R=r, C=c, WORD_SCALES=word_scales)
    assert torch.equal(out.cpu(), dequant_mxfp4(packed, scales, torch.bfloat16))


def _rotl(w: torch.Tensor, r: int) -> torch.Tensor:
    return ((w << r) | (w >> (32 - r))) & 0xFFFFFFFF if r else w


def _emulate_swz_asm(words: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """th.E2M1_SWZ_ASM op by op in torch (AND, rotate, OR, two bf16 multiplies): int32 words -> [..., 8] bf16."""
    w = words.to(torch.int64) & 0xFFFFFFFF
    (ra, ma), (rb, mb) = SPLIT3
    pairs = [_rotl(w, ROT[0]) & PAIR_MASK, _rotl(w, ROT[1]) & PAIR_MASK, _rotl(w, ROT[2]) & PAIR_MASK,
             (_rotl(w, ra) & ma) | (_rotl(w, rb) & mb)]  # fmt: skip
    scale = (scales.to(torch.int32) << 7).to(torch.int16).view(torch.bfloat16).float()  # 2**(s-127), s in 1..254
    out = [None] * 8
    for j, v in enumerate(pairs):
        for half, i in ((v & 0xFFFF, j), ((v >> 16) & 0xFFFF, j + 4)):
            x = half.to(torch.int32).to(torch.int16).view(torch.bfloat16).float()
            out[i] = ((x * 2.0**126).to(torch.bfloat16).float() * scale).to(torch.bfloat16)
    return torch.stack(out, -1)


def test_rot_encoding_asm_ops_decode_every_code_exactly() -> None:
    """The PTX's operations on rot-encoded words give dequant of the codes in slot order, bitwise, for all 16 codes
    in every slot under every normal scale; the PTX string carries exactly the layout's constants."""
    g = torch.Generator().manual_seed(3)
    codes = torch.randint(0, 16, (254 * 64, 8), generator=g, dtype=torch.uint8)
    codes[:16, :] = torch.arange(16, dtype=torch.uint8)[:, None]  # every code in every slot
    scales = torch.arange(1, 255, dtype=torch.uint8).repeat_interleave(64)
    words = _encode_words(codes)
    assert torch.equal(_decode_words(words), codes)
    got = _emulate_swz_asm(words, scales)
    want = dequant_mxfp4((codes[:, 0::2] | (codes[:, 1::2] << 4)).repeat(1, 4), scales[:, None], torch.bfloat16)
    want = want[:, :8]
    normal = (want.float().abs() >= 2.0**-126) | (want == 0)
    assert normal.float().mean() > 0.95
    assert torch.equal(got.view(torch.int16)[normal], want.view(torch.int16)[normal])
    asm = str(th.E2M1_SWZ_ASM.value)
    for r, m in ((ROT[1], PAIR_MASK), (ROT[2], PAIR_MASK), *SPLIT3):
        assert f"$8, $8, {r};" in asm and f"{m:#010x}" in asm
