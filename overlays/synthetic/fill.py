"""How each dummy parameter is refilled. Pure torch; the rule depends only on the name, dtype and shape, and
every value only on (seed, name, its position in the unsharded model): a counter-based hash of the global
coordinates (`shard.global_view`), so every process, both sides, and TP=1 vs TP=N serve the same model.

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
from typing import Any

import torch

from speedrun.overlays.synthetic.shard import View, global_view

E2M1_RMS = math.sqrt(68.5 / 8)  # rms of the 16 E2M1 codes drawn uniformly
LOGIT_GAIN = 4.0
FP8_BLOCK = 128


CHUNK = 1 << 22  # elements hashed per step (bounds the int64 temporaries)
_GOLDEN, _M1, _M2 = (c - (1 << 64) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))


def stream_key(seed: int, name: str) -> int:
    """One signed 64-bit key per (seed, parameter name): names are the same on every rank."""
    k = (seed * 1_000_003 + zlib.crc32(name.encode())) % (1 << 64)
    return k - (1 << 64) if k >= 1 << 63 else k


def _srl(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def hash64(key: int, flat: torch.Tensor) -> torch.Tensor:
    """splitmix64 of element `flat` of stream `key` (int64 arithmetic wraps, as splitmix's uint64 does)."""
    z = flat * _GOLDEN + key
    z = (z ^ _srl(z, 30)) * _M1
    z = (z ^ _srl(z, 27)) * _M2
    return z ^ _srl(z, 31)


def _normal(h: torch.Tensor) -> torch.Tensor:
    """N(0, 1) from one hash (Box-Muller on its two 24-bit halves)."""
    u1 = (_srl(h, 40).float() + 0.5) / 2**24
    u2 = ((_srl(h, 16) & 0xFFFFFF).float() + 0.5) / 2**24
    return torch.sqrt(-2 * torch.log(u1)) * torch.cos(2 * math.pi * u2)


def _global_flat(view: View, local: tuple[int, ...], rows: slice, device: torch.device):
    """Global flat index of each element of local rows `rows` (dim 0), broadcast to the chunk's shape, and the
    mask of padding positions (index -1: the loader leaves them zero), or None."""
    flat = torch.zeros((), dtype=torch.int64, device=device)
    pad = None
    stride = 1
    for d in reversed(range(len(local))):
        idx = view.index.get(d)
        idx = torch.arange(local[d]) if idx is None else idx
        if d == 0:
            idx = idx[rows]
        shape = [1] * len(local)
        shape[d] = -1
        idx = idx.to(device=device, dtype=torch.int64).view(shape)
        if bool((idx < 0).any()):
            pad = (idx < 0) if pad is None else (pad | (idx < 0))
        flat = flat + idx.clamp(min=0) * stride
        stride *= view.shape[d]
    return flat, pad


def draw(t: torch.Tensor, seed: int, name: str, view: View, fn: Any) -> None:
    """t[...] = fn(hash of each element's global position), in chunks of rows."""
    if t.numel() == 0:
        return
    if not t.is_contiguous():
        tmp = t.contiguous()
        draw(tmp, seed, name, view, fn)
        t.copy_(tmp)
        return
    key, local = stream_key(seed, name), tuple(t.shape) or (1,)
    flat_t = t.view(local)
    per_row = max(1, t.numel() // local[0])
    step = max(1, CHUNK // per_row)
    for r0 in range(0, local[0], step):
        rows = slice(r0, min(r0 + step, local[0]))
        flat, pad = _global_flat(view, local, rows, t.device)
        vals = fn(hash64(key, flat))
        flat_t[rows].copy_((vals if pad is None else vals.masked_fill(pad, 0)).to(t.dtype))


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


def fill_(name: str, t: torch.Tensor, seed: int, view: View | None = None) -> str:
    """Refill one tensor in place from its global view (default: unsharded); returns the rule used."""
    kind = kind_of(name, t)
    view = view or View(tuple(t.shape))
    fan_in = view.shape[-1] if view.shape else 1  # the unsharded fan-in: the same at every TP size
    with torch.no_grad():
        if kind == "mxfp4_bytes":
            draw(t, seed, name, view, lambda h: _srl(h, 56))
        elif kind == "e8m0_scale":
            s = e8m0_for_rms(1 / math.sqrt(fan_in * 32))
            draw(t, seed, name, view, lambda h: (s + _srl(h, 40) % 3 - 1).clamp(1, 254))
        elif kind == "ones":
            t.fill_(1.0)
        elif kind == "zeros":
            t.zero_()
        elif kind == "fp8_block_scale":
            t.fill_(1 / math.sqrt(fan_in * FP8_BLOCK))
        elif kind == "fp8_codes":
            draw(t, seed, name, view, lambda h: _normal(h).clamp(-4, 4))
        elif kind in ("matrix", "lm_head"):
            std = (LOGIT_GAIN if kind == "lm_head" else 1.0) / math.sqrt(fan_in)
            draw(t, seed, name, view, lambda h: _normal(h) * std)
    return kind


def _owners(model: torch.nn.Module) -> dict[str, tuple[Any, str, torch.Tensor]]:
    """state-dict name -> (owning module, local name, the Parameter itself: its attributes say how it shards)."""
    out = {}
    for mname, mod in model.named_modules():
        for local, p in [*mod._parameters.items(), *mod._buffers.items()]:
            if p is not None:
                out[f"{mname}.{local}" if mname else local] = (mod, local, p)
    return out


def fill_report_(model: torch.nn.Module, seed: int) -> dict[str, Any]:
    """Refill every parameter and buffer of `model`. Returns {tensors: {rule: n}, tp_sharded: n, tp_unmapped:
    [names]}: tensors whose place in the unsharded model is not known are drawn from local coordinates, so at
    TP > 1 they differ from TP = 1 (the report lists them)."""
    counts: dict[str, int] = {}
    owners = _owners(model)
    sharded, unmapped = 0, []
    for name, t in model.state_dict(keep_vars=True).items():
        mod, local, p = owners.get(name, (None, name, t))
        data = t.data if isinstance(t, torch.nn.Parameter) else t
        view = global_view(mod, local, p) if mod is not None else View(tuple(data.shape))
        if view is None:
            unmapped.append(name)
        elif view.index:
            sharded += 1
        kind = fill_(name, data, seed, view)
        counts[kind] = counts.get(kind, 0) + 1
    return {"tensors": counts, "tp_sharded": sharded, "tp_unmapped": unmapped}


def fill_model_(model: torch.nn.Module, seed: int) -> dict[str, int]:
    """Refill every parameter and buffer of `model`; returns {rule: tensors}."""
    return fill_report_(model, seed)["tensors"]
