"""Load-time MXFP4 value re-layout for sm90 kernels that put the weights on the MMA's register (A) side.

Why: a bf16 MMA fragment (mma.sync m16n8k16 / wgmma A-from-registers) gives lane l of a warp, for each 16-wide k
step s, the k columns 16s + 2c + {0, 1, 8, 9} with c = l % 4 (rows l // 4 and l // 4 + 8). In the plain layout
(codes in k order) those 4 codes sit in 2 different bytes and the lane's codes of 8 k steps are spread over a row
of 64 bytes, so the kernel loads narrow pieces and shuffles them (shared memory round trip or byte permutes).
Here each lane's codes for a 128-wide K chunk are made contiguous: one 16-byte vector load per row straight
into the fragment order, and each 32-bit word decodes to bf16 pairs (k, k+1) with no byte shuffles.

Layout ("swz128"), per row, per chunk of 128 codes along K (K is zero-padded to a multiple of 128; scales pad
with 127 = 1.0): the chunk's 64 bytes are 16 little-endian 32-bit words; word j = 4c + w (c = 0..3 the lane in
its quad, w = 0..3 the 32-wide scale group); code slot i of a word (its bits: `code_sources(i)`) is i = 4t + 2u + h,
and holds the code of

    k = 128 * chunk + 32 w + 16 u + 8 h + 2 c + t        (t, u, h in {0, 1})

so slots i and i + 4 of a word are an MMA pair (k, k+1), a word has one scale (group w of its chunk), and lane
c's 4 words (bytes 16c..16c+15) cover k steps 2w + u of its fragment. Rows, experts and the E8M0 scales keep their
plain layout (scales are only padded: to padded_k(K)/32 columns, then to a multiple of 16 bytes per
row). `swizzle_mxfp4` / `unswizzle_mxfp4` convert the packed bytes, exactly inverse.

Row groups ("swz128 g16 / g64", optional, on top of swz128): a tile's K step reads BN rows x 64 bytes of one chunk,
one 64-byte piece per row at the row's stride (3.5 KB for K 7168), so every piece is its own DRAM burst in another
page. `group_rows` stores each group of G rows chunk-major instead: the G rows' 64-byte pieces of one chunk are
contiguous (G x 64 bytes), and the scales' 4-byte words of that chunk likewise (G x 4 bytes). Tensors keep their
shape ([..., R, C]); only the memory order inside a group changes, so element (r, c) lives at offset

    (r // G) * G * C + (c // U) * G * U + (r % G) * U + c % U          (U: 16 words of codes, 4 scale bytes)

which is `swz_tile_ptrs` in mx.triton_helpers (G = 1 is the row-major layout). `swizzle_experts` /
`unswizzle_experts` convert codes and scales both ways, row groups included. In Triton,
`mx.triton_helpers.mxfp4_swz_bf16` (plain scales) / `mxfp4_swz_words_bf16` (scales gathered per word with
`swz_word_scale_cols`: 4 contiguous bytes per row, no redistribution) decode a loaded tile to plain k order.

Bits inside a word ("rot" encoding): the 8 codes are not stored nibble by nibble but scattered so that the sm90
decode needs no per-code shifts. A bf16 pair (k, k+1) wants each code's (m, e0, e1, s) at bits (6, 7, 8, 15) of
its 16-bit half (then one multiply by 2**126 * scale gives the value, subnormal 0.5 included). Output pair j = 0..2
is `rotl(word, ROT[j]) & PAIR_MASK`; pair 3 is `rotl(word, 6) & 0x80C080C0 | rotl(word, 14) & 0x01000100`
(no fourth rotation tiles the word: checked by brute force). `code_sources` gives each code bit's stored position;
the table is built from these constants and checked to be a bijection at import.
"""

from __future__ import annotations

import torch

CHUNK = 128  # codes per swizzle chunk along K (64 bytes per row)
WORD_UNIT = 16  # int32 words of one chunk of a row: the unit a row group keeps contiguous
SCALE_UNIT = 4  # scale bytes of one chunk of a row
PAIR_MASK = 0x81C081C0  # bits (6, 7, 8, 15) of both bf16 halves: (m, e0, e1, s) of an E2M1 code
ROT = (0, 4, 10)  # left rotations of the word giving pairs 0..2
SPLIT3 = ((6, 0x80C080C0), (14, 0x01000100))  # pair 3: (rotation, mask) twice, OR-ed
_TARGET = (6, 7, 8, 15)  # bf16 bit of code bit b (m, e0, e1, s) in the low half


def code_sources(nibble: int) -> tuple[int, int, int, int]:
    """Stored bit positions of code bits (m, e0, e1, s) of the word's code `nibble` (0..7: pair nibble % 4, high
    half when nibble >= 4)."""
    pair, half = nibble % 4, nibble // 4
    out = []
    for bit in _TARGET:
        p = bit + 16 * half
        rot = ROT[pair] if pair < 3 else next(r for r, m in SPLIT3 if (m >> p) & 1)
        out.append((p - rot) % 32)
    return tuple(out)


_SOURCES = [code_sources(i) for i in range(8)]
assert sorted(b for s in _SOURCES for b in s) == list(range(32)), "rot encoding must be a bit permutation"
# per code slot i: code value (0..15) -> its stored bits in the word
_ENCODE = torch.tensor([[sum(((c >> b) & 1) << s for b, s in enumerate(_SOURCES[i])) for c in range(16)]
                        for i in range(8)], dtype=torch.int64)  # fmt: skip


def _encode_words(codes: torch.Tensor) -> torch.Tensor:
    """codes uint8 [..., 8] (slot i = code i of the word) -> int32 [...] in the rot encoding."""
    lut = _ENCODE.to(codes.device)
    w = lut[torch.arange(8, device=codes.device), codes.long()].sum(-1)  # disjoint bits: sum == or
    return torch.where(w >= 2**31, w - 2**32, w).to(torch.int32)


def _decode_words(words: torch.Tensor) -> torch.Tensor:
    """int32 [...] in the rot encoding -> codes uint8 [..., 8] (the inverse of _encode_words)."""
    w = words.to(torch.int64) & 0xFFFFFFFF
    codes = [sum(((w >> s) & 1) << b for b, s in enumerate(_SOURCES[i])) for i in range(8)]
    return torch.stack(codes, -1).to(torch.uint8)


def padded_k(k: int) -> int:
    """K rounded up to whole swizzle chunks."""
    return -(-k // CHUNK) * CHUNK


def _codes(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [..., K/2] -> codes uint8 [..., K] (low nibble first)."""
    return torch.stack((packed & 0xF, packed >> 4), dim=-1).flatten(-2)


def _pack(codes: torch.Tensor) -> torch.Tensor:
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def swizzle_mxfp4(packed: torch.Tensor) -> torch.Tensor:
    """Plain packed E2M1 uint8 [..., K/2] -> swz128 uint8 [..., padded_k(K)/2] (same device, new tensor)."""
    k = packed.shape[-1] * 2
    kp = padded_k(k)
    codes = torch.nn.functional.pad(_codes(packed), (0, kp - k))
    lead = codes.shape[:-1]
    # plain k = (chunk, w, u, h, c, t) -> stored (chunk, c, w, t, u, h)
    codes = codes.reshape(*lead, kp // CHUNK, 4, 2, 2, 4, 2)
    nd = len(lead)
    perm = [*range(nd), nd, nd + 4, nd + 1, nd + 5, nd + 2, nd + 3]
    words = _encode_words(codes.permute(*perm).reshape(*lead, kp // 8, 8))
    return words.contiguous().view(torch.uint8)


def unswizzle_mxfp4(swz: torch.Tensor, k: int) -> torch.Tensor:
    """swz128 uint8 [..., padded_k(k)/2] -> plain packed uint8 [..., k/2] (the exact inverse of swizzle_mxfp4)."""
    kp = swz.shape[-1] * 2
    if kp != padded_k(k):
        raise ValueError(f"swizzled rows hold {kp} codes; K={k} needs {padded_k(k)}")
    codes = _decode_words(swz.contiguous().view(torch.int32)).flatten(-2)
    lead = codes.shape[:-1]
    nd = len(lead)
    codes = codes.reshape(*lead, kp // CHUNK, 4, 4, 2, 2, 2)  # stored (chunk, c, w, t, u, h)
    perm = [*range(nd), nd, nd + 2, nd + 4, nd + 5, nd + 1, nd + 3]  # -> (chunk, w, u, h, c, t)
    return _pack(codes.permute(*perm).reshape(*lead, kp)[..., :k]).contiguous()


SCALE_ROW_ALIGN = 16  # bytes: scale rows padded so a kernel may load a row's 4 scales of a chunk as one word


def pad_scales(scales: torch.Tensor, align: int = SCALE_ROW_ALIGN) -> torch.Tensor:
    """E8M0 uint8 [..., K/32] -> [..., padded_k(K)/32 rounded up to `align`], padded with 127 (1.0; the padded
    codes are zero and kernels mask past padded_k(K)/32 anyway)."""
    k = scales.shape[-1] * 32
    cols = -(-(padded_k(k) // 32) // align) * align
    return torch.nn.functional.pad(scales, (0, cols - scales.shape[-1]), value=127).contiguous()


def swizzle_experts(packed: torch.Tensor, scales: torch.Tensor, chunk: int = 8,
                    group: int = 1) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """[E, rows, K/2] + [E, rows, K/32] -> swz128 values + padded scales (rows in groups of `group`: module
    docstring), `chunk` experts at a time so the temporaries stay small next to the weights (load time, on the
    weights' device)."""
    e, rows, kb = packed.shape
    out = torch.empty(e, rows, padded_k(kb * 2) // 2, dtype=torch.uint8, device=packed.device)
    for i in range(0, e, chunk):
        out[i : i + chunk] = group_rows(swizzle_mxfp4(packed[i : i + chunk]), group, WORD_UNIT * 4)
    return out, group_rows(pad_scales(scales), group, SCALE_UNIT)


def unswizzle_experts(codes: torch.Tensor, scales: torch.Tensor, k: int,
                      group: int = 1) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The exact inverse of `swizzle_experts` for K = k: swz128 codes (uint8 or int32 words, [..., rows, *]) with
    rows in groups of `group` + padded scales -> plain packed uint8 [..., rows, k/2] + E8M0 [..., rows, k/32]."""
    packed = unswizzle_mxfp4(ungroup_rows(codes.view(torch.uint8), group, WORD_UNIT * 4), k)
    return packed, ungroup_rows(scales, group, SCALE_UNIT)[..., : k // 32].contiguous()


def _group_view(t: torch.Tensor, g: int, unit: int) -> tuple[int, ...]:
    *lead, r, c = t.shape
    if r % g or c % unit:
        raise ValueError(f"row groups of {g} need rows ({r}) divisible by {g} and columns ({c}) by {unit}")
    return (*lead, r // g, g, c // unit, unit)


def group_rows(t: torch.Tensor, g: int, unit: int) -> torch.Tensor:
    """[..., R, C] row-major -> the same shape with each group of `g` rows stored unit-major (module docstring);
    g = 1 returns `t`. A new contiguous tensor on t's device."""
    if g == 1:
        return t
    nd = t.dim() - 2
    v = t.reshape(_group_view(t, g, unit)).permute(*range(nd), nd, nd + 2, nd + 1, nd + 3)
    return v.contiguous().reshape(t.shape)


def ungroup_rows(t: torch.Tensor, g: int, unit: int) -> torch.Tensor:
    """The exact inverse of `group_rows`."""
    if g == 1:
        return t
    *lead, r, c = t.shape
    nd = len(lead)
    v = t.reshape(*lead, r // g, c // unit, g, unit).permute(*range(nd), nd, nd + 2, nd + 1, nd + 3)
    return v.contiguous().reshape(t.shape)


__all__ = ["CHUNK", "SCALE_ROW_ALIGN", "SCALE_UNIT", "WORD_UNIT", "group_rows", "pad_scales", "padded_k",
           "swizzle_experts", "swizzle_mxfp4", "ungroup_rows", "unswizzle_experts", "unswizzle_mxfp4"]  # fmt: skip
