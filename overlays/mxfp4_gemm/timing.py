"""Timing for the GEMM bench: CUDA-graph replay (how the server runs decode) and eager do_bench (second column).

Graph method: `calls` are N GEMMs on N distinct weight copies (same values, different addresses), captured in one
graph on a private stream. Before every replay a 256 MB write flushes L2 (not inside the timed events), so every
call streams its weights from HBM; µs per call = median replay time / N. Host launch cost is gone, as in the
server's decode graphs; the gaps between the graph's kernels stay in (they are real in the server too).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import torch

FLUSH_BYTES = 256 << 20
GRAPH_METHOD = (
    "CUDA graph of N calls on N distinct weight/activation copies (N from a per-impl memory budget, 2..16), "
    "captured on a private stream after one eager warm-up call each; 256 MB L2 flush before every replay, outside "
    "the events; us = median over replays of replay time / N"
)
EAGER_METHOD = "triton.testing.do_bench median (warmup 10 ms, rep 40 ms), L2 flushed before each rep, eager launches"

_flush: torch.Tensor | None = None


def flush_buffer() -> torch.Tensor:
    global _flush
    if _flush is None:
        _flush = torch.empty(FLUSH_BYTES // 4, dtype=torch.int32, device="cuda")
    return _flush


def copies(per_copy_bytes: int, budget: int = 3 << 30, lo: int = 2, hi: int = 16) -> int:
    """How many distinct weight copies a graph rotates through: as many as fit in `budget`, within [lo, hi]."""
    return max(lo, min(hi, budget // max(per_copy_bytes, 1)))


def time_graph(calls: list[Callable[[], Any]], reps: int = 0) -> float:
    """µs per call: every call captured once in one graph, L2 flushed before each replay (see module doc)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # compile, and allocate per-stream buffers (split-K counters) before capture
        for call in calls:
            call()
    stream.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        for call in calls:
            call()
    flush = flush_buffer()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    graph.replay()
    end.record()
    end.synchronize()
    one = start.elapsed_time(end)  # ms
    reps = reps or max(5, min(25, int(40 / max(one, 1e-3))))
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for s, e in events:
        flush.zero_()
        s.record()
        graph.replay()
        e.record()
    torch.cuda.synchronize()
    us = statistics.median(s.elapsed_time(e) for s, e in events) * 1e3 / len(calls)
    del graph
    return us


def time_eager(fn: Callable[[], Any]) -> float:
    import triton.testing

    return triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median") * 1e3  # us
