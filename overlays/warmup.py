"""Load-time JIT warm-up: every Triton kernel a served call can launch is compiled before the first request.

Triton compiles a kernel when it first meets a new specialization: new constexprs (each config bucket's tiles,
split-K, routes) and integers' divisibility by 16 (unless the kernel marks them `do_not_specialize`; the
overlays mark their per-call sizes). Decode sizes compile during SGLang's CUDA-graph capture, prefill sizes did
not until a request brought one: in the round 9 E2E run (docs/results/e2e/synth-deepseek-mxfp4-l30-fp8kv-h100-1k)
the first prefill wave waited ~3.1 s on compiles (TTFT p99 3.8 s against 0.5 s). So each op, once per process
and distinct plan, runs its call at both ends of every bucket's M range, up to the largest M a forward carries
(SGLang's chunked-prefill size). Setting `warmup` off skips it (faster start, compiles inside requests).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Iterable

import torch

from speedrun.overlays import environ, report
from speedrun.overlays.buckets import Buckets

DEFAULT_MAX_M = 8192  # SGLang's default chunked-prefill size on an 80 GB card
_done: set[Hashable] = set()
_totals: dict[str, dict[str, float]] = {}


def max_tokens() -> int:
    """The most tokens one forward carries: SGLang's chunked-prefill size (DEFAULT_MAX_M when unset or off)."""
    try:
        from sglang.srt.server_args import get_global_server_args

        size = get_global_server_args().chunked_prefill_size
    except Exception:  # no server (tests, benches) or an SGLang without global args
        return DEFAULT_MAX_M
    return size if size and size > 0 else DEFAULT_MAX_M


def bucket_ms(buckets: Buckets, per_m: float, cap: int) -> list[int]:
    """Both ends of each bucket's M range, where a call of M tokens has the bucket value M * per_m (MoE: top-k /
    experts; GEMM: 1), ascending and at most `cap`; buckets holding no whole M are skipped."""
    ms: set[int] = set()
    prev = 0.0
    for limit, _ in buckets.upto:
        lo, hi = math.floor(prev / per_m) + 1, math.floor(limit / per_m)
        ms |= {min(lo, cap), min(hi, cap)} if lo <= hi else set()
        prev = limit
    if buckets.above is not None:
        ms |= {min(math.floor(prev / per_m) + 1, cap), cap}
    return sorted(ms)


def warm(key: Hashable, op: str, ms: Iterable[int], call: Callable[[int], object]) -> None:
    """call(m) for each m, once per process for `key`; the count and seconds go to the per-process report as
    `<op>_warmup`. A failing call is reported and skipped (the served call of that size fails or compiles as it
    would have)."""
    if key in _done or not environ.settings().warmup:
        return
    _done.add(key)
    t0, n = time.perf_counter(), 0
    for m in ms:
        try:
            call(m)
            n += 1
        except Exception as exc:  # reported; serving goes on without this size warmed
            report.error(f"{op} warm-up at M={m}: {type(exc).__name__}: {exc}"[:300])
    if torch.cuda.is_available():
        torch.cuda.synchronize()  # the seconds include the kernels' first runs
    tot = _totals.setdefault(op, {"calls": 0, "seconds": 0.0})
    tot["calls"] += n
    tot["seconds"] = round(tot["seconds"] + time.perf_counter() - t0, 2)
    report.record(**{f"{op}_warmup": dict(tot)})


__all__ = ["bucket_ms", "max_tokens", "warm"]
