"""Where an MXFP4 MoE call spends its GPU time: each launch's kernel time (torch profiler, CUPTI), per model and M.

    device: source scripts/device/setup.sh && python3 scripts/device/moe_breakdown.py --out $OUT/moe_breakdown.json

Rows: model, M, kernel name, launches and µs per call (mean over the routing sets x repeats), its share of the
call, and for the two GEMMs the GB/s of the weight bytes they stream (touched experts' w13 or w2 + scales); one
"calls" row per (model, M) with kernels per call and the gaps between its eager launches (eval/kernels/breakdown.py).
The experts, routing sets and plan are the MoE bench's (eval/kernels/mxfp4_moe_bench.py), swz128 as served on sm90.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from speedrun.eval.kernels import breakdown
from speedrun.eval.kernels.mxfp4_moe_bench import MODELS, Model, make_raw, ours, routing_sets
from speedrun.overlays.mxfp4_moe.api import bucket_key, fused_moe_mxfp4, make_plan, swizzled
from speedrun.overlays.mxfp4_moe.config import CUDA_LAYOUT

REPEATS = 5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--ms", type=lambda s: [int(v) for v in s.split(",")], default=[1, 4, 16, 32, 64, 128])
    ap.add_argument("--models", type=lambda s: s.split(","), default=list(MODELS))
    ap.add_argument("--repeats", type=int, default=REPEATS)
    args = ap.parse_args(argv)
    if bad := [m for m in args.models if m not in MODELS]:
        ap.error(f"--models: unknown {bad}; expected some of {', '.join(MODELS)}")
    return args


def weight_bytes(touched: float, h: int, n: int) -> dict[str, float]:
    """Weight + scale bytes the two GEMMs stream for `touched` distinct experts (w13: [2n, h], w2: [h, n])."""
    return {"gemm1": touched * (2 * n * h // 2 + 2 * n * h // 32), "gemm2": touched * (h * n // 2 + h * n // 32)}


def rows_for(model: str, m: int, bucket: str, events: list[dict], calls: int,
             wbytes: dict[str, float]) -> list[dict[str, Any]]:  # fmt: skip
    """Per-kernel rows of `calls` MoE calls' trace events, then the call row (kernels per call, launch gaps)."""
    rows = []
    for k in breakdown.per_kernel(events, calls):
        row = {"model": model, "m": m, "bucket": bucket, **k}
        for g in ("gemm1", "gemm2"):
            if g in k["kernel"] and k["us"]:
                row["weight_GBps"] = round(wbytes[g] / k["us"] / 1e3, 1)
        rows.append(row)
    per_call = round(len(breakdown.kernels(events)) / calls)
    total = round(sum(r["us"] for r in rows), 2)
    rows.append({"model": model, "m": m, "bucket": bucket, "kernel": "calls", "us": total,
                 "launches_per_call": per_call, "gaps": breakdown.launch_gaps(events, per_call)})  # fmt: skip
    return rows


def breakdown_model(name: str, ms: list[int], repeats: int) -> list[dict[str, Any]]:
    """GPU: every M of one model."""
    mdl: Model = MODELS[name]
    e, topk, h, n, a4 = mdl[:5]
    w = swizzled(ours(make_raw(e, h, n, gptoss=not a4), gptoss=not a4), layout=CUDA_LAYOUT)
    plan = make_plan(w)
    rows = []
    for m in ms:
        sets = routing_sets(m, mdl)

        def run(sets: list[dict] = sets) -> None:
            for s in sets:
                fused_moe_mxfp4(s["x"], w, s["ids"], s["tw"], plan)

        events = breakdown.profile_calls(run, repeats)
        touched = sum(torch.unique(s["ids"]).numel() for s in sets) / len(sets)
        bucket, wbytes = bucket_key(w.fmt, m, topk, e), weight_bytes(touched, h, n)
        mine = rows_for(name, m, bucket, events, repeats * len(sets), wbytes)
        for r in mine:
            gbps = f" {r['weight_GBps']:7.0f} GB/s" if "weight_GBps" in r else ""
            print(f"{name:24} M={m:4d} {r['kernel'][:40]:40} {r['us']:8.1f} us x{r['launches_per_call']}{gbps}")
        rows += mine
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = []
    for model in args.models:
        rows += breakdown_model(model, args.ms, args.repeats)
        torch.cuda.empty_cache()
    breakdown.write_rows(args.out, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
