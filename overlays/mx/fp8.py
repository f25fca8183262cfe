"""MXFP4 weights -> FP8 e4m3 blocks (128x128, one power-of-two fp32 scale_inv each) for stock SGLang's FP8 block
kernels, and the per-device scratch the large-M routes convert into on every call (the MoE's experts:
overlays/mxfp4_moe/stock_fp8.py; a linear's weight: overlays/mxfp4_gemm/stock_fp8.py).

    nbytes = fp8_bytes(e, rows, k)                  # one [e, rows, k] stack in FP8 + its block scales
    SCRATCH.reserve(device, nbytes)                 # load time: grown for the largest weight, never shrunk
    q, qs, _ = carve(SCRATCH.get(device, nbytes), 0, e, rows, k)
    to_fp8(w, w_scale, k, q, qs, asm)               # every call (fp8_kernel.mxfp4_to_fp8_kernel)

The conversion is exact for tiles whose block scales lie within 14 binades of the tile's largest (the kernel's
docstring says why), so stock's kernel multiplies the MXFP4 weight's own values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from speedrun.overlays.mx.fp8_kernel import mxfp4_to_fp8_kernel

FP8_BLOCK = [128, 128]  # DeepSeek-R1's FP8 checkpoint block (weight_block_size)
TILE = FP8_BLOCK[0]


def _align(n: int) -> int:
    return -(-n // 256) * 256


def fp8_bytes(e: int, rows: int, k: int) -> int:
    """Bytes of a weight stack [e, rows, k] in FP8 plus its fp32 block scales, each part 256-byte aligned."""
    scales = e * -(-rows // TILE) * -(-k // TILE) * 4
    return _align(e * rows * k) + _align(scales)


def carve(buf: torch.Tensor, at: int, e: int, rows: int, k: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(fp8 [e, rows, k], fp32 scales [e, rows/128, k/128], next offset) as views of uint8 `buf` from byte `at`."""
    nq, ns = e * rows * k, e * -(-rows // TILE) * -(-k // TILE)
    q = buf[at : at + nq].view(torch.float8_e4m3fn).view(e, rows, k)
    at += _align(nq)
    s = buf[at : at + 4 * ns].view(torch.float32).view(e, -(-rows // TILE), -(-k // TILE))
    return q, s, at + _align(4 * ns)


def to_fp8(w: torch.Tensor, ws: torch.Tensor, k: int, q: torch.Tensor, qs: torch.Tensor, asm: bool,
           row_group: int = 1) -> None:  # fmt: skip
    """MXFP4 weights ([E,] rows, K/2: uint8 plain, or int32 swz128 words with rows in groups of `row_group`) + E8M0
    scales -> q float8_e4m3fn ([E,] rows, k) and qs fp32 ([E,] rows/128, k/128), first k columns; `asm`: the sm90
    inline-PTX decode."""
    if w.dim() == 2:  # one linear's weight: a stack of one
        w, ws, q, qs = w.unsqueeze(0), ws.unsqueeze(0), q.unsqueeze(0), qs.unsqueeze(0)
    e, rows = w.shape[:2]
    grid = (e, -(-rows // TILE), -(-k // TILE))
    mxfp4_to_fp8_kernel[grid](w, ws, q, qs, rows, k, w.stride(0), w.stride(1), ws.stride(0), ws.stride(1),
                              q.stride(0), q.stride(1), qs.stride(0), qs.stride(1), W_SWZ=w.dtype == torch.int32,
                              W_ASM=asm, BLOCK=TILE, W_ROWG=row_group, num_warps=8)  # fmt: skip


@dataclass
class Scratch:
    """One uint8 buffer per device that a route converts weights into on every call (its layers run one after
    another on one stream, so one buffer serves them all), sized for the largest at load time so that SGLang's
    KV-cache sizing, which runs after loading, sees it."""

    need: dict[torch.device, int] = field(default_factory=dict)  # bytes the largest weight reserved
    bufs: dict[torch.device, torch.Tensor] = field(default_factory=dict)

    def reserve(self, device: torch.device | str, nbytes: int) -> None:
        """Make the device's buffer hold `nbytes` (grown once per larger weight, never shrunk)."""
        device = torch.device(device)
        if nbytes > self.need.get(device, 0):
            self.need[device] = nbytes
            self.bufs.pop(device, None)  # free the smaller one before the new allocation
            self.bufs[device] = torch.empty(nbytes, dtype=torch.uint8, device=device)

    def get(self, device: torch.device | str, nbytes: int) -> torch.Tensor:
        """The device's buffer (reserved at load; allocated here only when nothing reserved enough)."""
        self.reserve(device, nbytes)
        return self.bufs[torch.device(device)]


@dataclass
class Resident:
    """The buffers a route keeps for the process's life instead of converting into its Scratch per call (settings
    mxfp4_*_stock_fp8 resident): one per weight, made at load; `gib` sums them for the per-process report."""

    sizes: dict[int, int] = field(default_factory=dict)  # bytes by the id of the weight a buffer copies

    def alloc(self, weight: torch.Tensor, nbytes: int) -> torch.Tensor:
        """A buffer for `weight`'s copy (a new one for the same weight replaces it in the count)."""
        self.sizes[id(weight)] = nbytes
        return torch.empty(nbytes, dtype=torch.uint8, device=weight.device)

    @property
    def gib(self) -> float:
        return round(sum(self.sizes.values()) / 2**30, 3)


__all__ = ["FP8_BLOCK", "TILE", "Resident", "Scratch", "carve", "fp8_bytes", "to_fp8"]
