"""MXFP4 MoE bench (one GPU): ours vs SGLang's paths at the finals' shapes.

GPT-OSS-120B (E=128, top-4, H=I=2880, w4a16): speedrun vs triton_kernels (SGLang's Hopper default) and
flashinfer's sm90 cutlass MXFP4 path. DeepSeek-R1 MXFP4 TP8 shard (E=256+1 shared, top-9, H=7168, I=256,
w4a4): speedrun vs experts dequantized to bf16 + SGLang's Triton fused-MoE kernel.

Timing: each impl runs R routing sets (different experts, so weights stream from HBM rather than L2) captured
in one CUDA graph (eager fallback if capture fails); µs per call. `speedrun_dot_scaled` / `speedrun_dequant`
is ours with the other MMA path than the config's (a tuning aid). GB/s counts the minimal bytes: the MXFP4
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
from speedrun.overlays.mxfp4_moe.moe import ACT_SILU, ACT_SWIGLU_OAI, MoeWeights, fused_moe_mxfp4, pick_config

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


def flipped(w: MoeWeights, m: int, topk: int) -> dict[str, Any]:
    """The tuned config with the other MMA path (dot_scaled <-> register dequant + tl.dot)."""
    cfg = dict(pick_config(w, m, topk))
    cfg["dot_scaled"] = not cfg.get("dot_scaled", False)
    return cfg


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
    impls: dict[str, Any] = {"speedrun": (ids_tw, lambda x, st: fused_moe_mxfp4(x, w, *st))}
    alt = "speedrun_dequant" if pick_config(w, 1, topk).get("dot_scaled") else "speedrun_dot_scaled"
    impls[alt] = (ids_tw, lambda x, st: fused_moe_mxfp4(x, w, *st, cfg=flipped(w, x.shape[0], topk)))
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
        base = dict(gpu=gpu, model=model, m=m, experts=e, topk=topk, hidden=h, inter=n, bytes=nbytes)
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


SWEEP_MS = {"gpt-oss-120b": (1, 64), "deepseek-r1-mxfp4-tp8": (1, 128)}
# Overrides of the tuned config: the previous default (no swap, generic decode), each new knob alone, Triton's own
# sm90 dot_scaled upcast, deeper / shallower K tiles, and GEMM1 without split-K.
SWEEP_VARIANTS = {
    "old_noswap_deq0": {"swap": False, "deq": 0},
    "noswap_deq2": {"swap": False, "deq": 2},
    "swap_deq0": {"swap": True, "deq": 0},
    "dot_scaled": {"dot_scaled": True},
    "swap_deq2_bk256": {"swap": True, "deq": 2, "BLOCK_K1": 256, "BLOCK_K2": 256, "stages1": 3, "stages2": 3},
    "swap_deq2_bk128": {"swap": True, "deq": 2, "BLOCK_K1": 128, "BLOCK_K2": 128},
    "no_split1": {"split1": 1},
}


def sweep_model(model: str, gpu: str) -> list[dict[str, Any]]:
    """Every SWEEP_VARIANTS entry (plus the config itself) at SWEEP_MS[model]; rows carry `variant` + `config`."""
    e, topk, h, n, a4, _ = MODELS[model]
    raw = make_raw(e, h, n, gptoss=not a4)
    w = ours(raw, gptoss=not a4)
    rows = []
    for m in SWEEP_MS[model]:
        sets = routing_sets(m, e, topk, h)
        nbytes = min_bytes(sets, e, h, n, gptoss=not a4)
        base_cfg = pick_config(w, m, topk)
        try:
            want = fused_moe_mxfp4(sets[0]["x"], w, sets[0]["ids"], sets[0]["tw"]).float()
        except Exception:  # the config's own row records the error below
            want = None
        for name, var in {"config": {}, **SWEEP_VARIANTS}.items():
            cfg = {**base_cfg, **var}
            row = dict(impl="speedrun", variant=name, config=cfg, gpu=gpu, model=model, m=m, bytes=nbytes)
            try:
                got = fused_moe_mxfp4(sets[0]["x"], w, sets[0]["ids"], sets[0]["tw"], cfg=cfg).float()
                if want is not None:
                    row["rel_diff_vs_config"] = round(((got - want).norm() / want.norm()).item(), 5)
                calls = [lambda s=s, cfg=cfg: fused_moe_mxfp4(s["x"], w, s["ids"], s["tw"], cfg=cfg) for s in sets]
                us, mode = time_calls(calls)
                gbps = nbytes / us / 1e3
                rows.append({**row, "us": round(us, 2), "gbps": round(gbps, 1),
                             "pct_hbm_peak": round(100 * gbps * 1e9 / HBM_PEAK, 1), "timing": mode})  # fmt: skip
            except Exception as exc:
                rows.append({**row, "us": None, "error": f"{type(exc).__name__}: {exc}"[:300]})
        for r in sorted((r for r in rows if r["m"] == m and r["us"]), key=lambda r: r["us"]):
            print(f"sweep {model} M={m} {r['variant']:18} {r['us']:9.1f} us {r['pct_hbm_peak']:5.1f} %HBM")
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
