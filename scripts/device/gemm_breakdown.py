"""Where an MXFP4 GEMM decode call spends its GPU time: kernels per call, each kernel's µs, and the idle gap
between launches inside a CUDA graph replay (torch profiler, CUPTI), at DeepSeek-R1 decode shapes.

    device: source scripts/device/setup.sh && python3 scripts/device/gemm_breakdown.py --out $OUT/gemm_breakdown.json

Per shape and impl (default ours; `--impls` takes any of the GEMM bench's, e.g. fp8_deepgemm for stock's two
launches), as the bench prepares it (eval/kernels/mxfp4_gemm_bench.py): N distinct weight copies (the timer's
count: together they exceed the L2, so no call finds its weights cached), N calls
  - eager: per-kernel rows (launches and µs per call, µs per launch, share),
  - graph: the N calls captured in one CUDA graph, replayed `--repeats` times: the same rows from the replays,
    and the gaps between consecutive kernels within a call and between calls (eval/kernels/breakdown.py).
A "calls" row per (shape, impl, mode) sums the call: kernels per call, µs, GB/s of the bench's minimal bytes.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path
from typing import Any

import torch

from speedrun.eval.kernels import breakdown, timer
from speedrun.eval.kernels import mxfp4_gemm_bench as bench

# DeepSeek-R1 decode GEMMs: fused_qkv_a, o_proj (TP8 K), shared/dense down at M 64, q_b (TP1 N) at M 16, kv_b (TP8)
SHAPES = ((1, 2112, 7168), (1, 7168, 2048), (64, 7168, 2048), (16, 24576, 1536), (1, 4096, 512))
REPEATS = 10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--shapes", type=lambda s: [bench.parse_shape(v) for v in s.split(",")], default=list(SHAPES),
                    help="MxNxK,... (default: " + ",".join("x".join(map(str, s)) for s in SHAPES) + ")")  # fmt: skip
    ap.add_argument("--impls", type=lambda s: s.split(","), default=["speedrun"])
    ap.add_argument("--repeats", type=int, default=REPEATS, help="graph replays (eager: calls x repeats)")
    args = ap.parse_args(argv)
    if bad := [i for i in args.impls if i not in bench.IMPLS]:
        ap.error(f"--impls: unknown {bad}; expected some of {', '.join(bench.IMPLS)}")
    return args


def rows_for(shape: tuple[int, int, int], impl: str, mode: str, events: list[dict], calls: int,
             per_call: int | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Per-kernel rows of `calls` GEMM calls' trace events, then the "calls" row: kernels per call (counted here
    unless given: a graph replay is grouped by the eager count), µs, GB/s, and the launch gaps."""
    m, n, k = shape
    head = {"m": m, "n": n, "k": k, "impl": impl, "mode": mode}
    rows = [{**head, **r} for r in breakdown.per_kernel(events, calls)]
    per_call = per_call or round(len(breakdown.kernels(events)) / calls)
    us = round(sum(r["us"] for r in rows), 2)
    nbytes = bench._bytes(m, n, k, bench.W_FMT.get(impl, "mxfp4"))
    gaps = breakdown.launch_gaps(events, per_call)
    call = {**head, "kernel": "calls", "launches_per_call": per_call, "us": us, "gaps": gaps}
    if us:
        call["gbps"] = round(nbytes / us / 1e3, 1)
    return [*rows, call]


def breakdown_shape(shape: tuple[int, int, int], impl: str, lut: torch.Tensor, repeats: int) -> list[dict[str, Any]]:
    """GPU: one impl at one shape, eager then graph-replayed."""
    m, n, k = shape
    a, w, ws = bench.operands(m, n, k, seed=m + n)
    ops0, fn = bench.prepare(impl, a, w, ws, lut)
    nbytes = bench._bytes(m, n, k, bench.W_FMT.get(impl, "mxfp4"))
    copies = timer.Copies(ops0)
    count = timer.plan_copies(nbytes, sum(t.numel() * t.element_size() for t in ops0), timer.device_cache_bytes(),
                              timer.memory_budget())  # fmt: skip
    calls = [partial(fn, *copies(i)) for i in range(count)]

    def eager() -> None:
        for call in calls:
            call()

    rows = rows_for(shape, impl, "eager", breakdown.profile_calls(eager, repeats), count * repeats)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream):
        eager()  # warm on the capture stream (per-stream buffers), as the timer does
        with torch.cuda.graph(graph, stream=stream):
            eager()
    torch.cuda.synchronize()
    per_call = rows[-1]["launches_per_call"]
    rows += rows_for(shape, impl, "graph", breakdown.profile_calls(graph.replay, repeats), count * repeats, per_call)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    lut = bench._lut(torch.device("cuda"))
    rows = []
    for shape in args.shapes:
        for impl in args.impls:
            try:
                mine = breakdown_shape(shape, impl, lut, args.repeats)
            except RuntimeError as exc:  # an impl this machine cannot run (deep_gemm missing): a row says why
                why = str(exc).splitlines()[0]
                print(f"{'x'.join(map(str, shape)):>14} {impl:12} skipped: {why}")
                m, n, k = shape
                rows.append({"m": m, "n": n, "k": k, "impl": impl, "kernel": "calls", "skipped": why})
                continue
            for r in mine:
                gaps = r.get("gaps", {}).get("gap_within_call_us", {})
                extra = f" gap {gaps['mean']:.2f} us" if gaps else ""
                print(f"{'x'.join(map(str, shape)):>14} {impl:12} {r['mode']:5} {r['kernel'][:48]:48} "
                      f"{r['us']:8.2f} us x{r['launches_per_call']}{extra}")  # fmt: skip
            rows += mine
            torch.cuda.empty_cache()
        breakdown.write_rows(args.out, rows)  # after every shape: a deadline keeps what was measured
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
