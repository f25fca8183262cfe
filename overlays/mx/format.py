"""MXFP4 layout in torch: unpack/pack E2M1 nibbles, decode E8M0 scales, dequantize. Reference maths only."""

from __future__ import annotations

import torch

BLOCK = 32  # elements per E8M0 scale along K
# E2M1 code -> value; bit 3 is the sign. Codes 0..7: 0, 0.5, 1, 1.5, 2, 3, 4, 6.
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


def unpack_e2m1(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [..., K/2] -> float32 values [..., K] (low nibble first)."""
    table = torch.tensor(E2M1_VALUES, dtype=torch.float32, device=packed.device)
    lo = (packed & 0x0F).long()
    hi = (packed >> 4).long()
    return torch.stack((table[lo], table[hi]), dim=-1).flatten(-2)


def pack_e2m1(codes: torch.Tensor) -> torch.Tensor:
    """int codes [..., K] in 0..15 -> uint8 [..., K/2] (element 2i in the low nibble)."""
    codes = codes.to(torch.uint8)
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def e8m0_to_float(scale: torch.Tensor) -> torch.Tensor:
    """uint8 E8M0 -> float32 2**(s-127); 255 -> NaN."""
    s = scale.to(torch.int32)
    out = torch.exp2((s - 127).to(torch.float32))
    return torch.where(s == 255, torch.full_like(out, float("nan")), out)


def dequant_mxfp4(packed: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """packed uint8 [..., K/2] + scales uint8 [..., K/32] -> values [..., K] in `dtype`."""
    vals = unpack_e2m1(packed)
    k = vals.shape[-1]
    if scale.shape[-1] * BLOCK != k:
        raise ValueError(f"scale has {scale.shape[-1]} blocks for K={k}; expected {k // BLOCK}")
    vals = vals.unflatten(-1, (k // BLOCK, BLOCK)) * e8m0_to_float(scale).unsqueeze(-1)
    return vals.flatten(-2).to(dtype)
