"""Device buffers our kernels share across calls."""

from __future__ import annotations

import torch

SPLITK_COUNTERS = 16384  # entries: far above any grid's split-K tiles, so a captured graph never sees a resize

_counters: dict[tuple[str, int | None, int], torch.Tensor] = {}


def splitk_counters(device: torch.device, n: int) -> torch.Tensor:
    """Zeroed split-K arrival counters, one buffer per (device, stream). Every kernel that uses them leaves
    them zeroed, so launches on one stream can share the buffer. Allocated once, before graph capture (a
    buffer replaced after a capture would leave the graph pointing at the old one)."""
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = (device.type, device.index, stream)
    buf = _counters.get(key)
    if buf is None or buf.numel() < n:
        buf = torch.zeros(max(n, SPLITK_COUNTERS), dtype=torch.int32, device=device)
        _counters[key] = buf
    return buf
