"""Where an MXFP4 MoE call spends its GPU time: each launch's kernel time (torch profiler, CUPTI), per model and M.

    device: source scripts/device/setup.sh && python3 scripts/device/moe_breakdown.py --out $OUT/moe_breakdown.json

Rows: model, M, kernel name, µs per call (mean over the routing sets x repeats), its share of the call, and for
the two GEMMs the GB/s of the weight bytes they stream (touched experts' w13 or w2 + scales).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from speedrun.eval.kernels.mxfp4_moe_bench import MODELS, make_raw, ours, routing_sets
from speedrun.overlays.mxfp4_moe.api import bucket_key, fused_moe_mxfp4, make_plan, swizzled

REPEATS = 5


def weight_bytes(sets: list[dict], h: int, n: int) -> dict[str, float]:
    touched = sum(torch.unique(s["ids"]).numel() for s in sets) / len(sets)
    return {"gemm1": touched * (2 * n * h // 2 + 2 * n * h // 32), "gemm2": touched * (h * n // 2 + h * n // 32)}


def breakdown(model: str, ms: list[int]) -> list[dict]:
    mdl = MODELS[model]
    e, topk, h, n, a4 = mdl[:5]
    w = swizzled(ours(make_raw(e, h, n, gptoss=not a4), gptoss=not a4))
    plan = make_plan(w)
    rows = []
    for m in ms:
        sets = routing_sets(m, e, topk, h)
        for s in sets:  # compile + warm
            fused_moe_mxfp4(s["x"], w, s["ids"], s["tw"], plan)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(REPEATS):
                for s in sets:
                    fused_moe_mxfp4(s["x"], w, s["ids"], s["tw"], plan)
            torch.cuda.synchronize()
        per = defaultdict(float)
        for ev in prof.events():
            if ev.device_type.name == "CUDA":
                per[ev.name] += ev.device_time_total if hasattr(ev, "device_time_total") else ev.cuda_time_total
        calls = REPEATS * len(sets)
        total = sum(per.values()) / calls
        wb = weight_bytes(sets, h, n)
        for name, t in sorted(per.items(), key=lambda kv: -kv[1]):
            us = t / calls
            row = {"model": model, "m": m, "bucket": bucket_key(w.fmt, m, topk, e), "kernel": name,
                   "us": round(us, 2), "share": round(us / total, 3)}  # fmt: skip
            for g in ("gemm1", "gemm2"):
                if g in name:
                    row["weight_GBps"] = round(wb[g] / us / 1e3, 1)
            rows.append(row)
            print(f"{model:24} M={m:4d} {name[:40]:40} {us:8.1f} us {100 * us / total:5.1f}%"
                  + (f" {row['weight_GBps']:7.0f} GB/s" if "weight_GBps" in row else ""))  # fmt: skip
        print(f"{model:24} M={m:4d} {'TOTAL (kernels)':40} {total:8.1f} us")
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--ms", default="1,4,16,32,64,128")
    args = ap.parse_args()
    ms = [int(v) for v in args.ms.split(",")]
    rows = []
    for model in MODELS:
        rows += breakdown(model, ms)
        torch.cuda.empty_cache()
    args.out.write_text(json.dumps({"gpu": torch.cuda.get_device_name(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
