"""MXFP4 MoE bench (one GPU): ours vs SGLang's paths at the finals' shapes.

GPT-OSS-120B (E=128, top-4, H=I=2880, w4a16): speedrun vs triton_kernels (SGLang's Hopper default) and
flashinfer's sm90 cutlass MXFP4 path. DeepSeek-R1 MXFP4 TP8 shard (E=256+1 shared, top-9, H=7168, I=256,
w4a4): speedrun vs experts dequantized to bf16 + SGLang's Triton fused-MoE kernel.

Timing: each impl runs R routing sets (different experts, so weights stream from HBM rather than L2) captured
in one CUDA graph (eager fallback if capture fails); µs per call. `speedrun` is the serving default on sm90
(experts in mx.layout's swz128 value layout), `speedrun_plain` the same configs on plain-layout experts
(round 2). GB/s counts the minimal bytes: the MXFP4
weights+scales (+biases) of the distinct experts each call touches, plus x and the output; % of HBM uses the
H100 SXM nominal 3.35 TB/s. Top-k selection is not timed for anyone (triton_kernels' routing() also sorts,
so its expert sort is free here, ours is timed).

    python -m speedrun.overlays.mxfp4_moe.bench --out DIR   # writes DIR/mxfp4_moe.json and DIR/mxfp4_moe.png
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from speedrun.overlays.mxfp4_moe.baselines import BUILDERS, Raw
from speedrun.overlays.mxfp4_moe.hook import _deinterleave
from speedrun.overlays.mxfp4_moe.moe import (
    ACT_SILU,
    ACT_SWIGLU_OAI,
    MoeWeights,
    bucket_key,
    fused_moe_mxfp4,
    pick_config,
    swizzled,
)

HBM_PEAK = 3.35e12  # H100 SXM nominal
ROUTING_SETS = 8
# model: experts, topk, hidden, inter, w4a4, baselines
MODELS = {
    "gpt-oss-120b": (128, 4, 2880, 2880, False, ("triton_kernels", "flashinfer")),
    "deepseek-r1-mxfp4-tp8": (257, 9, 7168, 256, True, ("dequant_fused_moe",)),
}
MS = (1, 4, 16, 64, 128, 512, 4096)


def make_raw(e: int, h: int, n: int, gptoss: bool) -> Raw:
    g = torch.Generator(device="cuda").manual_seed(0)
    u8 = lambda *s, lo=0, hi=256: torch.randint(lo, hi, s, generator=g, device="cuda", dtype=torch.uint8)
    bias = lambda *s: (torch.randn(*s, generator=g, device="cuda") * 0.1).bfloat16() if gptoss else None
    return Raw(u8(e, 2 * n, h // 2), u8(e, 2 * n, h // 32, lo=118, hi=122), u8(e, h, n // 2),
               u8(e, h, n // 32, lo=118, hi=122), bias(e, 2 * n), bias(e, h))  # fmt: skip


def ours(raw: Raw, gptoss: bool) -> MoeWeights:
    """What hook.process_weights leaves: de-interleaved gate/up and fp32 biases for GPT-OSS."""
    if not gptoss:
        return MoeWeights(raw.w13, raw.s13, raw.w2, raw.s2, a4=True, act=ACT_SILU)
    n = raw.w13.shape[1] // 2
    return MoeWeights(_deinterleave(raw.w13, n), _deinterleave(raw.s13, n), raw.w2, raw.s2,
                      _deinterleave(raw.b13.float(), n), raw.b2.float(), act=ACT_SWIGLU_OAI)  # fmt: skip


def routing_sets(m: int, e: int, topk: int, h: int) -> list[dict[str, torch.Tensor]]:
    out = []
    for i in range(ROUTING_SETS):
        g = torch.Generator(device="cuda").manual_seed(1000 * m + i)
        logits = torch.randn(m, e, generator=g, device="cuda")
        vals, ids = logits.topk(topk, dim=1)
        x = torch.randn(m, h, generator=g, device="cuda").bfloat16()
        out.append({"x": x, "ids": ids.int(), "tw": torch.softmax(vals, -1), "logits": logits})
    return out


def time_calls(calls: list) -> tuple[float, str]:
    """µs per call over the routing sets: CUDA graph of all calls, else eager."""
    for c in calls:
        c()
    torch.cuda.synchronize()
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for c in calls:
                c()
        run, mode = graph.replay, "graph"
    except Exception:
        torch.cuda.synchronize()
        run, mode = (lambda: [c() for c in calls]), "eager"
    run()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    reps = 5
    start.record()
    for _ in range(reps):
        run()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / (reps * len(calls)), mode


def min_bytes(sets: list[dict], e: int, h: int, n: int, gptoss: bool) -> float:
    per_expert = 2 * n * h // 2 + 2 * n * h // 32 + h * n // 2 + h * n // 32 + (2 * n + h) * 2 * gptoss
    touched = sum(torch.unique(s["ids"]).numel() for s in sets) / len(sets)
    return touched * per_expert + 2 * sets[0]["x"].numel() * 2


def bench_model(model: str, gpu: str, ms: tuple[int, ...], allow_jit: bool = False) -> list[dict[str, Any]]:
    e, topk, h, n, a4, baselines = MODELS[model]
    raw = make_raw(e, h, n, gptoss=not a4)
    w = ours(raw, gptoss=not a4)
    ids_tw = lambda i, t, lg: (i, t)
    ws = swizzled(w)
    impls: dict[str, Any] = {"speedrun": (ids_tw, lambda x, st: fused_moe_mxfp4(x, ws, *st))}
    alt = "speedrun_plain"
    impls[alt] = (ids_tw, lambda x, st: fused_moe_mxfp4(x, w, *st))
    errors: dict[str, str] = {}
    for name in baselines:
        try:
            impls[name] = BUILDERS[name](raw, topk, allow_jit=allow_jit)
        except Exception as exc:  # a missing baseline is a row, not a crash
            errors[name] = f"setup: {type(exc).__name__}: {exc}"[:300]
    rows = []
    for m in ms:
        sets = routing_sets(m, e, topk, h)
        nbytes = min_bytes(sets, e, h, n, gptoss=not a4)
        base = dict(gpu=gpu, model=model, m=m, bucket=bucket_key(w.fmt, m, topk, e), experts=e, topk=topk, hidden=h,
                    inter=n, bytes=nbytes)  # fmt: skip
        ref_out = None
        for name in ("speedrun", alt, *baselines):
            row = dict(impl=name, **base)
            if name in errors:
                rows.append({**row, "us": None, "gbps": None, "error": errors[name]})
                continue
            prepare, run = impls[name]
            try:
                states = [prepare(s["ids"], s["tw"], s["logits"]) for s in sets]
                out = run(sets[0]["x"], states[0])
                ref_out = out if name == "speedrun" else ref_out
                if ref_out is not None and name != "speedrun":
                    diff = (out.float() - ref_out.float()).norm() / ref_out.float().norm()
                    row["rel_diff_vs_speedrun"] = round(diff.item(), 5)
                calls = [lambda s=s, st=st, run=run: run(s["x"], st) for s, st in zip(sets, states, strict=True)]
                us, mode = time_calls(calls)
                gbps = nbytes / us / 1e3
                rows.append({**row, "us": round(us, 2), "gbps": round(gbps, 1),
                             "pct_hbm_peak": round(100 * gbps * 1e9 / HBM_PEAK, 1), "timing": mode})  # fmt: skip
            except Exception as exc:
                rows.append({**row, "us": None, "gbps": None, "error": f"{type(exc).__name__}: {exc}"[:300]})
    return rows


SWEEP_MS = {"gpt-oss-120b": (1, 4, 16, 32, 64, 128, 512), "deepseek-r1-mxfp4-tp8": (1, 16, 128)}
# Overrides of the tuned config ("layout" picks the experts' value layout, default swz128 = what the sm90 hook
# stores): the round-2 path (plain layout), Triton's own sm90 dot_scaled upcast (plain), and swz128 knobs: deeper
# K tiles, no swap-AB, the two-multiply decode, 128-row weight tiles (2 warpgroups), GEMM1 without split-K (round
# 2's 32-row w4a4 GEMM1 tile is not swept: 2.5x more loop instructions per code in SASS, PERF.md).
SWEEP_VARIANTS = {
    "plain": {"layout": "plain"},
    "dot_scaled": {"layout": "plain", "dot_scaled": True},
    "swz_bk256": {"BLOCK_K1": 256, "BLOCK_K2": 256, "stages1": 3, "stages2": 3},
    "swz_noswap": {"swap": False},
    "swz_mul2": {"mul1": False},
    "swz_bn128": {"BLOCK_N1": 128, "BLOCK_N2": 128, "warps1": 8, "warps2": 8, "stages1": 3, "stages2": 3},
    "swz_no_split1": {"split1": 1},
}


KNOB_DEFAULTS = {"split1": 1, "mul1": True, "swap": False, "deq": 0, "dot_scaled": False}  # as moe.py reads them


def variant_cfg(base: dict[str, Any], var: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """(config for fused_moe_mxfp4, value layout) of a sweep variant on top of a bucket's config."""
    cfg = {**base, "dot_scaled": False, **var}
    return {k: v for k, v in cfg.items() if k != "layout"}, var.get("layout", "swz")


def _sweep_row(w: dict[str, MoeWeights], sets: list[dict], cfg: dict[str, Any], layout: str, want: Any,
               row: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    try:
        wl = w[layout]
        got = fused_moe_mxfp4(sets[0]["x"], wl, sets[0]["ids"], sets[0]["tw"], cfg=cfg).float()
        if want is not None:
            row["rel_diff_vs_config"] = round(((got - want).norm() / want.norm()).item(), 5)
        calls = [lambda s=s: fused_moe_mxfp4(s["x"], wl, s["ids"], s["tw"], cfg=cfg) for s in sets]
        us, mode = time_calls(calls)
        gbps = row["bytes"] / us / 1e3
        return {**row, "us": round(us, 2), "gbps": round(gbps, 1),
                "pct_hbm_peak": round(100 * gbps * 1e9 / HBM_PEAK, 1), "timing": mode}  # fmt: skip
    except Exception as exc:
        return {**row, "us": None, "error": f"{type(exc).__name__}: {exc}"[:300]}


def sweep_model(model: str, gpu: str) -> list[dict[str, Any]]:
    """Every SWEEP_VARIANTS entry (plus the config itself) at SWEEP_MS[model]; rows carry `bucket` (the config
    key the shape maps to), `variant`, `config` (what fused_moe_mxfp4 ran) and `us`; impl "speedrun" on swz128
    experts (the sm90 serving layout), "speedrun_plain" on plain ones."""
    e, topk, h, n, a4, _ = MODELS[model]
    raw = make_raw(e, h, n, gptoss=not a4)
    plain_w = ours(raw, gptoss=not a4)
    w = {"plain": plain_w, "swz": swizzled(plain_w)}
    rows = []
    for m in SWEEP_MS[model]:
        sets = routing_sets(m, e, topk, h)
        nbytes = min_bytes(sets, e, h, n, gptoss=not a4)
        base_cfg = pick_config(plain_w, m, topk)
        bucket = bucket_key(plain_w.fmt, m, topk, e)
        try:
            want = fused_moe_mxfp4(sets[0]["x"], w["swz"], sets[0]["ids"], sets[0]["tw"]).float()
        except Exception:  # the config's own row records the error below
            want = None
        seen: list[tuple[dict[str, Any], str]] = []
        for name, var in {"config": {}, **SWEEP_VARIANTS}.items():
            cfg, layout = variant_cfg(base_cfg, var)
            key = ({**KNOB_DEFAULTS, **cfg}, layout)
            if key in seen:  # a no-op here (e.g. split1 outside tpe<=1): the config's row stands for it
                continue
            seen.append(key)
            # the value layout is per process, not a bucket knob: plain-layout rows are "speedrun_plain" so that
            # `speedrun kernels tune` (which reads impl "speedrun" rows) never writes a layout into the table
            impl = "speedrun" if layout == "swz" else "speedrun_plain"
            row = dict(impl=impl, variant=name, bucket=bucket, config=cfg, gpu=gpu, model=model, m=m, bytes=nbytes)
            rows.append(_sweep_row(w, sets, cfg, layout, want, row))
        for r in sorted((r for r in rows if r["m"] == m and r["us"]), key=lambda r: r["us"]):
            print(f"sweep {model} M={m} {bucket} {r['variant']:14} {r['impl']:15} {r['us']:9.1f} us "
                  f"{r['pct_hbm_peak']:5.1f} %HBM")  # fmt: skip
    return rows


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        for impl in dict.fromkeys(r["impl"] for r in rows if r["model"] == model):
            pts = [(r["m"], r["us"]) for r in rows if r["model"] == model and r["impl"] == impl and r["us"]]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=impl)
        ax.set(xscale="log", yscale="log", xlabel="tokens (M)", ylabel="µs per MoE layer", title=model)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"MXFP4 MoE on {rows[0]['gpu']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def summary(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'model':24} {'M':>5} {'impl':18} {'us':>9} {'GB/s':>7} {'%HBM':>5} {'x vs ours':>9}"]
    ours_us = {(r["model"], r["m"]): r["us"] for r in rows if r["impl"] == "speedrun"}
    for r in rows:
        mine = ours_us.get((r["model"], r["m"]))
        ratio = f"{r['us'] / mine:9.2f}" if r["us"] and mine and r["impl"] != "speedrun" else " " * 9
        us = f"{r['us']:9.1f}" if r["us"] else "    error"
        gb = f"{r['gbps']:7.0f} {r['pct_hbm_peak']:5.1f}" if r["us"] else " " * 13
        lines.append(f"{r['model']:24} {r['m']:5d} {r['impl']:18} {us} {gb} {ratio}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--ms", default=",".join(map(str, MS)))
    ap.add_argument("--sweep", action="store_true", help="only time the variants: DIR/mxfp4_moe_sweep.json")
    ap.add_argument("--allow-jit", action="store_true", help="let flashinfer JIT-compile its CUTLASS MoE (minutes)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("mxfp4_moe bench needs a GPU")
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    gpu, t0, rows = torch.cuda.get_device_name(), time.time(), []
    ms = tuple(int(v) for v in args.ms.split(","))
    if args.sweep:
        for model in args.models.split(","):
            rows += sweep_model(model, gpu)
            torch.cuda.empty_cache()
        (args.out / "mxfp4_moe_sweep.json").write_text(json.dumps({"meta": {"hbm_peak_Bps": HBM_PEAK}, "rows": rows}))
        print(f"[{time.time() - t0:.1f} s] -> {args.out / 'mxfp4_moe_sweep.json'}")
        return 0 if all(r["us"] for r in rows) else 1
    for model in args.models.split(","):
        rows += bench_model(model, gpu, ms, args.allow_jit)
        torch.cuda.empty_cache()
    meta = {"hbm_peak_Bps": HBM_PEAK, "routing_sets": ROUTING_SETS, "seconds": round(time.time() - t0, 1),
            "bytes": "MXFP4 weights+scales(+bias) of distinct touched experts + x + out", "doc": __doc__}  # fmt: skip
    (args.out / "mxfp4_moe.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    try:
        plot(rows, args.out / "mxfp4_moe.png")
    except Exception as exc:
        print(f"plot failed: {exc}")
    print(summary(rows))
    print(f"[{meta['seconds']} s] -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
