"""Per-launch breakdown of one op call (scripts/device/moe_breakdown.py, gemm_breakdown.py): the torch profiler's
Chrome trace of some calls (CUPTI kernel records, the same events `speedrun profile` reads with
eval/profile.py), turned into kernels per call, each kernel's µs, and the idle gaps between consecutive launches
of one call (inside a CUDA graph replay: what the graph leaves between kernels).

`profile_calls` needs a GPU; everything else is pure Python over the trace's event dicts (CPU-tested).
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from speedrun.eval.profile import load_trace, summarize

Event = dict[str, Any]  # a Chrome-trace event: name, cat, ph, ts (µs), dur (µs)


def profile_calls(run: Callable[[], Any], repeats: int) -> list[Event]:
    """GPU: `run()` once untimed (compile, allocate), then `repeats` times under the profiler; the trace's events."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    run()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(repeats):
            run()
        torch.cuda.synchronize()
    return trace_events(prof)


def trace_events(prof: Any) -> list[Event]:
    """A finished torch profiler's Chrome-trace events (exported and read back as `speedrun profile` reads
    SGLang's traces)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        return load_trace(path)


def kernels(events: list[Event], cat: str = "kernel") -> list[Event]:
    """The GPU kernel records (`cat`), in launch order."""
    return sorted((e for e in events if e.get("ph") == "X" and e.get("cat") == cat and "dur" in e),
                  key=lambda e: float(e["ts"]))  # fmt: skip


def per_kernel(events: list[Event], calls: int, cat: str = "kernel") -> list[dict[str, Any]]:
    """One row per kernel name: launches per call, µs per call (all its launches), µs per launch, share of the
    call's kernel time; most expensive first."""
    s = summarize(events, cat, top=10**6)
    total = s["kernel_time_us"] or 1.0
    return [{"kernel": k["name"], "launches_per_call": round(k["count"] / calls, 3),
             "us": round(k["total_us"] / calls, 2), "us_per_launch": round(k["avg_us"], 2),
             "share": round(k["total_us"] / total, 3)} for k in s["kernels"]]  # fmt: skip


def launch_gaps(events: list[Event], per_call: int, cat: str = "kernel") -> dict[str, Any]:
    """Idle µs between consecutive launches (next start - previous end), within one call (the kernels grouped
    `per_call` at a time, in launch order) and between calls (graph replays: the boundaries between replays
    count too: see `max`), and the span of a call (first start to last end).
    Counts that do not divide into calls give only `kernels` (a launch was lost or added: no grouping is safe)."""
    ks = kernels(events, cat)
    out: dict[str, Any] = {"kernels": len(ks), "per_call": per_call}
    if not ks or per_call < 1 or len(ks) % per_call:
        return out
    ends = [(float(k["ts"]), float(k["ts"]) + float(k["dur"])) for k in ks]
    groups = [ends[i : i + per_call] for i in range(0, len(ends), per_call)]
    within = [b[0] - a[1] for g in groups for a, b in zip(g, g[1:], strict=False)]
    between = [b[0][0] - a[-1][1] for a, b in zip(groups, groups[1:], strict=False)]
    out.update(calls=len(groups), call_span_us=_stats([g[-1][1] - g[0][0] for g in groups]))
    if within:
        out["gap_within_call_us"] = _stats(within)
    if between:
        out["gap_between_calls_us"] = _stats(between)
    return out


def _stats(values: list[float]) -> dict[str, float]:
    return {"mean": round(statistics.fmean(values), 2), "min": round(min(values), 2), "max": round(max(values), 2)}


def write_rows(out: Path, rows: list[dict[str, Any]]) -> None:
    """The breakdown scripts' JSON: the GPU's name and every row."""
    import json

    import torch

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"gpu": torch.cuda.get_device_name(), "rows": rows}, indent=1))
    print(f"-> {out}")
