"""How each dummy parameter is refilled. Pure torch; the rule depends only on the name, dtype and shape,
and the random stream only on (seed, name), so every process and both sides get the same values.

SGLang's dummy loader fills every float tensor with U(-1e-3, 1e-3) (norm weights too, so activations
vanish), leaves uint8 MXFP4 weights zero (gpt-oss) or uninitialised (quark) and their E8M0 scales at 1.0
or 2**-126, and casts 1e-3 into fp8 (mostly subnormal zeros). We refill:
  norms -> 1; biases / 1-D -> 0; matrices -> N(0, 1/fan_in) (lm_head x LOGIT_GAIN, so greedy decoding has
  clear winners); fp8 matrices -> N(0, 1) codes with block scales 1/sqrt(fan_in);
  MXFP4 bytes -> uniform random codes with E8M0 scales giving the same 1/sqrt(fan_in) rms.
"""

from __future__ import annotations

import math
import zlib

import torch

E2M1_RMS = math.sqrt(68.5 / 8)  # rms of the 16 E2M1 codes drawn uniformly
LOGIT_GAIN = 4.0
FP8_BLOCK = 128


def generator(seed: int, name: str, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63))
    return g


def kind_of(name: str, t: torch.Tensor) -> str:
    """The fill rule for one parameter (exposed for tests and the report)."""
    leaf = name.rsplit(".", 1)[-1]
    if t.dtype == torch.uint8:
        return "e8m0_scale" if "scale" in leaf else "mxfp4_bytes"
    if not torch.is_floating_point(t):
        return "keep"
    if "norm" in name and t.dim() == 1:
        return "ones"
    if "scale" in leaf:
        return "fp8_block_scale" if t.dim() >= 2 else "ones"
    if "bias" in leaf or t.dim() < 2:
        return "zeros"
    if t.element_size() == 1:
        return "fp8_codes"
    return "lm_head" if "lm_head" in name else "matrix"


def e8m0_for_rms(rms: float) -> int:
    """E8M0 exponent byte s with 2**(s-127) * E2M1_RMS ~= rms."""
    return int(round(127 + math.log2(rms / E2M1_RMS)))


def fill_(name: str, t: torch.Tensor, seed: int) -> str:
    """Refill one tensor in place; returns the rule used."""
    kind = kind_of(name, t)
    g = generator(seed, name, t.device)
    with torch.no_grad():
        if kind == "mxfp4_bytes":
            t.copy_(torch.randint(0, 256, t.shape, generator=g, device=t.device, dtype=torch.int32).to(t.dtype))
        elif kind == "e8m0_scale":
            fan_in = t.shape[-1] * 32
            s = e8m0_for_rms(1 / math.sqrt(fan_in))
            jitter = torch.randint(-1, 2, t.shape, generator=g, device=t.device, dtype=torch.int32)
            t.copy_((s + jitter).clamp(1, 254).to(t.dtype))
        elif kind == "ones":
            t.fill_(1.0)
        elif kind == "zeros":
            t.zero_()
        elif kind == "fp8_block_scale":
            t.fill_(1 / math.sqrt(t.shape[-1] * FP8_BLOCK))
        elif kind == "fp8_codes":
            t.copy_(torch.randn(t.shape, generator=g, device=t.device, dtype=torch.float32).clamp(-4, 4).to(t.dtype))
        elif kind in ("matrix", "lm_head"):
            std = (LOGIT_GAIN if kind == "lm_head" else 1.0) / math.sqrt(t.shape[-1])
            t.copy_(torch.randn(t.shape, generator=g, device=t.device, dtype=torch.float32).mul_(std).to(t.dtype))
    return kind


def fill_model_(model: torch.nn.Module, seed: int) -> dict[str, int]:
    """Refill every parameter and buffer of `model`; returns {rule: tensors}."""
    counts: dict[str, int] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        kind = fill_(name, t.data if isinstance(t, torch.nn.Parameter) else t, seed)
        counts[kind] = counts.get(kind, 0) + 1
    return counts
