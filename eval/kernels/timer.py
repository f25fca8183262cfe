"""One GPU timer for every op bench (ours and every baseline), so that their numbers sit side by side.

Method ("cuda_graph"): the op is bound to N distinct copies of its weights and inputs (same values, different
addresses) and the N calls are captured in one CUDA graph (HIP graph on ROCm) on a private stream, after one
eager warm-up call each (JIT, autotuning, per-stream buffers). N is the smallest count whose copies exceed the
last-level cache (L2, read from the device; on ROCm plus the 256 MB Infinity Cache, which torch does not
report), at least 2 and at most 64, and as many as fit the memory budget. Before every replay the cache is
flushed outside the timed events: a buffer of twice the cache is written (evicts everything), then another of
that size is read, so the lines left behind are clean and no write-back of the flush is billed to the op. Each
replay is timed with CUDA events; per call = replay time / N; the result is the median over the replays, with
p10 and p90. A callable that cannot be captured falls back to eager launches ("eager"), same copies, same
flush, same statistic, and says why. Every result carries a `timing` block naming all of this.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable
from typing import Any

MIN_COPIES, MAX_COPIES = 2, 64
MIN_REPLAYS, MAX_REPLAYS = 20, 200
TARGET_MS = 60.0  # timed replays per measurement: about this much GPU time, within [MIN_REPLAYS, MAX_REPLAYS]
MEMORY_BUDGET = 8 << 30  # bytes all copies of one impl may allocate (also at most a quarter of free memory)
HIP_INFINITY_CACHE = 256 << 20  # MI300X / MI325X / MI355X last-level cache beside L2 (not in device properties)
STATISTIC = "median over replays of (replay time / copies); p10 and p90 alongside"
# Nominal HBM peaks (bytes/s) by device-name substring, most specific first; the H100 SXM figure otherwise.
HBM_PEAKS = (("H100 PCIE", 2.0e12), ("H100 NVL", 3.9e12), ("H200", 4.8e12), ("H100", 3.35e12),
             ("MI355X", 8.0e12), ("MI325X", 6.0e12), ("MI300X", 5.3e12))  # fmt: skip
DEFAULT_PEAK = ("H100 SXM (default)", 3.35e12)


@dataclasses.dataclass(frozen=True)
class Timing:
    """One measurement: µs per call (median, p10, p90) and how it was taken."""

    us: float
    p10: float
    p90: float
    method: str  # "cuda_graph" | "eager"
    copies: int
    flush_bytes: int
    replays: int
    fallback: str | None = None  # why a graph was not used

    def block(self) -> dict[str, Any]:
        """The `timing` block every results row carries."""
        out = {"method": self.method, "copies": self.copies, "flush_bytes": self.flush_bytes,
               "replays": self.replays, "statistic": STATISTIC}  # fmt: skip
        if self.fallback:
            out["fallback"] = self.fallback
        return out

    def fields(self) -> dict[str, Any]:
        """Row fields: us (median), us_p10, us_p90 and the timing block."""
        return {"us": round(self.us, 2), "us_p10": round(self.p10, 2), "us_p90": round(self.p90, 2),
                "timing": self.block()}  # fmt: skip


def method_meta(cache_bytes: int | None = None) -> dict[str, Any]:
    """The results file's description of the method (meta["timing"])."""
    out: dict[str, Any] = {"method": "cuda_graph", "fallback": "eager", "statistic": STATISTIC,
                           "copies": f"smallest N whose copies exceed the cache, in [{MIN_COPIES}, {MAX_COPIES}], "
                                     f"within {MEMORY_BUDGET >> 30} GiB (or a quarter of free memory)",
                           "flush": "write 2x cache bytes, then read 2x cache bytes, before every replay, untimed",
                           "doc": __doc__}  # fmt: skip
    if cache_bytes:
        out.update(cache_bytes=cache_bytes, flush_bytes=flush_size(cache_bytes))
    return out


# ---------------------------------------------------------------- arithmetic (no GPU)
def cache_size(l2_bytes: int, hip: bool) -> int:
    """Bytes of last-level cache a flush and the copies must exceed."""
    return l2_bytes + (HIP_INFINITY_CACHE if hip else 0)


def flush_size(cache_bytes: int) -> int:
    """Twice the cache, rounded up to a MiB: every resident line is evicted."""
    return -(-2 * cache_bytes // (1 << 20)) * (1 << 20)


def plan_copies(call_bytes: int, alloc_bytes: int, cache_bytes: int, budget: int,
                lo: int = MIN_COPIES, hi: int = MAX_COPIES) -> int:  # fmt: skip
    """N copies: the fewest whose bytes touched per call (`call_bytes`) sum past the cache, within [lo, hi], and
    no more than `budget` holds at `alloc_bytes` each (at least 1: one copy bigger than the budget still runs)."""
    need = cache_bytes // max(call_bytes, 1) + 1
    fit = budget // max(alloc_bytes, 1)
    return max(1, min(hi, max(lo, need), fit))


def replay_count(one_replay_ms: float, target_ms: float = TARGET_MS) -> int:
    """Timed replays: about `target_ms` of GPU time, within [MIN_REPLAYS, MAX_REPLAYS]."""
    want = math.ceil(target_ms / max(one_replay_ms, 1e-4))
    return max(MIN_REPLAYS, min(MAX_REPLAYS, want))


def percentiles(values: list[float]) -> tuple[float, float, float]:
    """(median, p10, p90) of the per-call times."""
    if len(values) < 2:
        return values[0], values[0], values[0]
    deciles = statistics.quantiles(values, n=10, method="inclusive")
    return statistics.median(values), deciles[0], deciles[-1]


def hbm_peak(device_name: str) -> tuple[str, float]:
    """(which entry, bytes/s) of the nominal HBM peak for a device name."""
    upper = device_name.upper()
    return next(((k, v) for k, v in HBM_PEAKS if k in upper), DEFAULT_PEAK)


def clone_tensors(obj: Any) -> Any:
    """The same structure with every tensor cloned (dicts, lists, tuples, named tuples, dataclasses)."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.clone()
    if isinstance(obj, dict):
        return {k: clone_tensors(v) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(clone_tensors(v) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(clone_tensors(v) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        init = {f.name: clone_tensors(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
        return dataclasses.replace(obj, **init)
    return obj


def tensor_bytes(obj: Any) -> int:
    """Bytes of every tensor in a structure (as clone_tensors walks it)."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return sum(tensor_bytes(getattr(obj, f.name)) for f in dataclasses.fields(obj))
    return 0


class Copies:
    """copies(i): copy i of some inputs; 0 is the original, the others clones made on first use."""

    def __init__(self, base: Any) -> None:
        self._made: dict[int, Any] = {0: base}

    def __call__(self, i: int) -> Any:
        if i not in self._made:
            self._made[i] = clone_tensors(self._made[0])
        return self._made[i]

    def __len__(self) -> int:
        return len(self._made)


class Built:
    """built(i): `build(source(i))` — an impl's load-time set-up on copy i (untimed), made on first use and kept.
    `alloc_bytes`: what one copy holds, the source copy plus what building copy 0 allocated (measured)."""

    def __init__(self, build: Callable[[Any], Any], source: Callable[[int], Any]) -> None:
        self.build, self.source, self.made = build, source, {}
        self.alloc_bytes = 0

    def __call__(self, i: int) -> Any:
        if i not in self.made:
            import torch

            before = torch.cuda.memory_allocated()
            self.made[i] = self.build(self.source(i))
            if i == 0:
                added = max(torch.cuda.memory_allocated() - before, 0)
                self.alloc_bytes = tensor_bytes(self.source(0)) + added
        return self.made[i]


# ---------------------------------------------------------------- GPU
_flush: dict[int, tuple[Any, Any]] = {}


def device_cache_bytes() -> int:
    import torch

    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return cache_size(int(getattr(props, "L2_cache_size", 0) or 64 << 20), bool(torch.version.hip))


def memory_budget() -> int:
    import torch

    free, _ = torch.cuda.mem_get_info()
    return min(MEMORY_BUDGET, free // 4)


def flush_cache() -> int:
    """Evict the cache on the current stream (write one buffer, read another); returns the bytes written."""
    import torch

    dev = torch.cuda.current_device()
    if dev not in _flush:
        n = flush_size(device_cache_bytes()) // 4
        _flush[dev] = tuple(torch.ones(n, dtype=torch.int32, device="cuda") for _ in range(2))
    write, read = _flush[dev]
    write.fill_(0)
    read.sum()
    return write.numel() * 4


def time_calls(make: Callable[[int], Callable[[], Any]], call_bytes: int, alloc_bytes: int | None = None, *,
               copies: int | None = None, graph: bool = True, replays: int | None = None) -> Timing:  # fmt: skip
    """Time `make(i)()` (the op on copy i) as the module doc says. `call_bytes`: bytes one call touches (sizes N);
    `alloc_bytes`: bytes one copy allocates (bounds N by the memory budget; default call_bytes). A failing call
    raises; a failing capture falls back to eager launches."""
    import torch

    n = copies or plan_copies(call_bytes, alloc_bytes or call_bytes, device_cache_bytes(), memory_budget())
    calls = [make(i) for i in range(n)]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # compile / autotune / allocate per-stream buffers before any capture
        for call in calls:
            call()
    stream.synchronize()
    run, cuda_graph, why = _capture(calls, stream) if graph else (None, None, "graph=False")
    if run is None:
        run = lambda: [call() for call in calls]
    run()
    torch.cuda.synchronize()
    flushed = flush_cache()
    one = _timed(run)
    reps = replays or replay_count(one)
    pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for start, end in pairs:
        flush_cache()
        start.record()
        run()
        end.record()
    torch.cuda.synchronize()
    per_call = [start.elapsed_time(end) * 1e3 / n for start, end in pairs]
    del cuda_graph
    med, p10, p90 = percentiles(per_call)
    return Timing(med, p10, p90, "cuda_graph" if why is None else "eager", n, flushed, reps, why)


def _capture(calls: list[Callable[[], Any]], stream: Any) -> tuple[Callable[[], Any] | None, Any, str | None]:
    """(replay, graph, None), or (None, None, why) when the calls cannot be captured."""
    import torch

    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph, stream=stream):
            for call in calls:
                call()
    except Exception as exc:  # e.g. a host sync inside the op: eager launches instead, and say so
        torch.cuda.synchronize()
        return None, None, f"{type(exc).__name__}: {exc}"[:200]
    return graph.replay, graph, None


def _timed(run: Callable[[], Any]) -> float:
    """ms of one run after a flush (sizes the replay count)."""
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    flush_cache()
    start.record()
    run()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)
