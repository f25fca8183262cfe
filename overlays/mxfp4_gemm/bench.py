"""MXFP4 GEMM benchmark (one run, one GPU): ours vs dequant+cuBLAS vs bf16 cuBLAS.

impl `speedrun`: our GEMM from bf16 activations, MXFP4 activation quantization included (route per config).
impl `dequant_cublas`: W dequantized to bf16 in torch on every call (LUT gather + scale), then torch.matmul.
impl `bf16_cublas`: torch.matmul with weights dequantized beforehand (the bf16 compute ceiling; no quantization).
Timing (timing.py): `us` = CUDA-graph replay of N calls on N distinct weight copies, L2 flushed before each replay
(how the server runs decode); `us_eager` = do_bench median with eager launches (host launch cost included).
GB/s counts minimal bytes: MXFP4 W (N*K/2 + N*K/32) + bf16 A + bf16 C; bf16_cublas counts bf16 W (N*K*2).
HBM % uses 3.35 TB/s (H100 SXM nominal). `--sweep` graph-times the variants (SWEEP_VARIANTS) at SWEEP_SHAPES and
writes DIR/mxfp4_gemm_sweep.json: rows carry `bucket` (the M bucket key in configs/<arch>.json "default"), `nk`
(the per-shape override key "NxK"), `variant`, `config` (the full dict) and `us`; the best per shape is printed.

python -m speedrun.overlays.mxfp4_gemm.bench --out DIR   -> DIR/mxfp4_gemm.json, DIR/mxfp4_gemm.png
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from speedrun.overlays.mxfp4_gemm.shapes import BRIEF, DEEPSEEK_NK, PREFILL_M, PREFILL_NK
from speedrun.overlays.mxfp4_gemm.timing import EAGER_METHOD, GRAPH_METHOD, copies, time_eager, time_graph

HBM_PEAK_GBS = 3350.0
DECODE_M = (1, 16, 64)


def shapes() -> list[tuple[int, int, int]]:
    out = list(BRIEF)
    out += [(m, n, k) for (n, k) in DEEPSEEK_NK.values() for m in DECODE_M]
    out += [(m, n, k) for (n, k) in PREFILL_NK for m in PREFILL_M]
    return list(dict.fromkeys(out))


def _lut(device: torch.device) -> torch.Tensor:
    """byte -> (low value, high value) in bf16: one gather dequantizes two elements."""
    from speedrun.overlays.mx.format import E2M1_VALUES

    vals = torch.tensor(E2M1_VALUES, dtype=torch.float32)
    b = torch.arange(256)
    return torch.stack((vals[b & 15], vals[b >> 4]), dim=-1).to(torch.bfloat16).to(device)


def torch_dequant(w: torch.Tensor, ws: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    n, kh = w.shape
    vals = lut[w.long()].view(n, kh * 2 // 32, 32)
    scale = torch.exp2(ws.float() - 127).to(torch.bfloat16)
    return (vals * scale.unsqueeze(-1)).view(n, kh * 2)


def dequant_matmul(a: torch.Tensor, w: torch.Tensor, ws: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    return torch.matmul(a, torch_dequant(w, ws, lut).t())


def _bytes(m: int, n: int, k: int, bf16_w: bool) -> int:
    w = n * k * 2 if bf16_w else n * k // 2 + n * k // 32
    return w + m * k * 2 + m * n * 2


def _row(impl: str, gpu: str, m: int, n: int, k: int, us: float | None, err: str | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"impl": impl, "gpu": gpu, "m": m, "n": n, "k": k, "us": us}
    if us:
        gbps = _bytes(m, n, k, impl == "bf16_cublas") / us / 1e3
        row.update(gbps=round(gbps, 1), hbm_pct=round(100 * gbps / HBM_PEAK_GBS, 1),
                   tflops=round(2 * m * n * k / us / 1e6, 2), us=round(us, 2))  # fmt: skip
    if err:
        row["error"] = err[:300]
    return row


def weights(n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random MXFP4 codes and E8M0 scales (2**-9 .. 2**-3) made on the GPU (fast at the big shapes)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    packed = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, device="cuda", generator=g)
    return packed, torch.randint(118, 125, (n, k // 32), dtype=torch.uint8, device="cuda", generator=g)


Call = Callable[[], Any]


def time_both(make: Callable[[int], Call], per_copy_bytes: int) -> tuple[float | None, float | None, str | None]:
    """(graph us, eager us, error): `make(i)` builds the call on copy i (copy 0 is the eager one)."""
    g_us = e_us = None
    errs = []
    try:
        g_us = time_graph([make(i) for i in range(copies(per_copy_bytes))])
    except Exception as exc:  # a failing method is a field, not the end of the run
        errs.append(f"graph: {type(exc).__name__}: {exc}")
    torch.cuda.empty_cache()
    try:
        e_us = time_eager(make(0))
    except Exception as exc:
        errs.append(f"eager: {type(exc).__name__}: {exc}")
    return g_us, e_us, "; ".join(errs) or None


def rotating(m: int, n: int, k: int, seed: int) -> Callable[[int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Copy i of (A, W, W scales): the same values at distinct addresses, made on first use."""
    a0 = torch.randn(m, k, device="cuda", generator=torch.Generator(device="cuda").manual_seed(seed)).bfloat16()
    w0, ws0 = weights(n, k, seed)
    cache: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {0: (a0, w0, ws0)}

    def get(i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if i not in cache:
            cache[i] = (a0.clone(), w0.clone(), ws0.clone())
        return cache[i]

    return get


_relaid: dict[int, tuple[torch.Tensor, torch.Tensor, str]] = {}


def new_shape() -> None:
    """Forget the previous shape's re-laid-out weights (and free them)."""
    _relaid.clear()
    torch.cuda.empty_cache()


def ours(data: Callable[[int], tuple[torch.Tensor, ...]], i: int, layout: str,
         cfg: dict[str, Any] | None = None) -> Call:  # fmt: skip
    """Our GEMM on copy i, its weights in `layout` as the hook leaves them at load time (re-laid out once, untimed)."""
    from speedrun.overlays.mxfp4_gemm.gemm import mxfp4_gemm, relayout_weight

    a, w, ws = data(i)
    if layout == "plain":
        return partial(mxfp4_gemm, a, w, ws, config=cfg)
    if i not in _relaid:  # cleared per shape (new_shape)
        _relaid[i] = relayout_weight(w, ws)
    w2, s2, lay = _relaid[i]
    return partial(mxfp4_gemm, a, w2, s2, config=cfg, w_layout=lay)


def bench_shape(m: int, n: int, k: int, gpu: str, lut: torch.Tensor) -> list[dict[str, Any]]:
    from speedrun.overlays.mxfp4_gemm.gemm import bucket_of, config_arch, pick_config, route_for, weight_layout

    new_shape()
    data = rotating(m, n, k, seed=m + n)
    mx_bytes = _bytes(m, n, k, False)
    bf: dict[int, torch.Tensor] = {}

    def bf16_call(i: int) -> Call:
        if i not in bf:
            bf[i] = torch_dequant(data(0)[1], data(0)[2], lut)
        return partial(torch.matmul, data(0)[0], bf[i].t())

    impls: dict[str, tuple[Callable[[int], Call], int]] = {
        "speedrun": (lambda i: ours(data, i, weight_layout(config_arch(torch.device("cuda")))), mx_bytes),
        "dequant_cublas": (lambda i: partial(dequant_matmul, *data(i), lut), mx_bytes),
        "bf16_cublas": (bf16_call, _bytes(m, n, k, True)),
    }
    cfg = pick_config(m, n, k, config_arch(torch.device("cuda")))
    rows = []
    for impl, (make, nbytes) in impls.items():
        g_us, e_us, err = time_both(make, nbytes)
        row = _row(impl, gpu, m, n, k, g_us, err)
        row["us_eager"] = round(e_us, 2) if e_us else None
        if impl == "speedrun":
            row.update(bucket=bucket_of(m), route=route_for(cfg, n, k))
        rows.append(row)
        bf.clear()
        torch.cuda.empty_cache()
    return rows


# One row per (shape, variant); the shapes cover each decode bucket with big and small weights (the route choice).
SWEEP_SHAPES = ((1, 36864, 7168), (16, 7168, 16384), (16, 2112, 7168), (4, 2880, 512), (16, 32768, 512),
                (1, 24576, 1536), (64, 7168, 2048), (64, 4096, 7168), (32, 4096, 512))  # fmt: skip
# Each variant overrides the config on the table's weight layout (sm90: swz128, with the bucket's "swz" overrides)
# unless it names "w_layout": the round-2 plain layout, the route (fused A-quant vs a quantizer launch, under
# graphs), the split-K policy (old "~2 CTAs per SM" rule, none), pipeline depth (occupancy), tiles.
SWEEP_VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {"w_layout": "plain"},
    "plain_bk64_st6": {"w_layout": "plain", "BLOCK_K": 64, "num_stages": 6},
    "fused": {"route": "fused"},
    "prequant": {"route": "prequant", "fused_below_nk": 0},
    "old_split": {"CTAS_PER_SM": 0},
    "sk1": {"SPLIT_K": 1},
    "st3": {"num_stages": 3},
    "st6": {"num_stages": 6},
    "bk256_st4": {"BLOCK_K": 256, "num_stages": 4},
    "bn128w8": {"BLOCK_N": 128, "num_warps": 8, "num_stages": 4},
}
# Resident CTAs per SM (ptxas sm_90a registers and shared memory, PERF.md) of the variants that change them, by
# bucket, for the wave-balanced split-K.
VARIANT_CTAS = {
    "plain_bk64_st6": {"16": 8, "32": 6, "64": 3},
    "st3": {"16": 9, "32": 6, "64": 3},
    "st6": {"16": 4, "32": 2, "64": 2},
    "bk256_st4": {"16": 3, "32": 2, "64": 1},
    "bn128w8": {"16": 3, "32": 2, "64": 1},
}


def variant_config(base: dict[str, Any], variant: str, bucket: str, layout: str) -> tuple[dict[str, Any], str]:
    """(config, weight layout) of a sweep row. The config is in the table's own terms, as `speedrun kernels tune`
    writes winners back: the bucket's entry with the variant's knobs where they take effect, i.e. inside the
    entry's "swz" overrides when the weights are swz128 (replaced whole), else at the top level."""
    var = dict(SWEEP_VARIANTS.get(variant, {}))
    layout = var.pop("w_layout", layout)
    if bucket in VARIANT_CTAS.get(variant, {}):
        var["CTAS_PER_SM"] = VARIANT_CTAS[variant][bucket]
    cfg = copy.deepcopy(base)
    if layout != "plain" and var:
        cfg["swz"] = {**cfg.get("swz", {}), **var}
    else:
        cfg.update(var)
    return cfg, layout


SWEEP_BUDGET_S = 100.0


def sweep_rows(gpu: str, budget_s: float = SWEEP_BUDGET_S) -> list[dict[str, Any]]:
    """Every SWEEP_VARIANTS entry on SWEEP_SHAPES, graph-timed (tuning aid; prints the best per shape). Once
    `budget_s` is spent the remaining rows are written with "skipped": true (the device step has a hard timeout)."""
    from speedrun.overlays.mxfp4_gemm.gemm import bucket_of, config_arch, mxfp4_gemm, pick_config, weight_layout

    rows, t0 = [], time.time()
    for m, n, k in SWEEP_SHAPES:
        if time.time() - t0 > budget_s:
            print(f"sweep: budget {budget_s:.0f} s spent, skipping ({m},{n},{k})")
            rows.append(
                {**_row("speedrun", gpu, m, n, k, None), "variant": "*", "bucket": bucket_of(m), "skipped": True}
            )
            continue
        new_shape()
        data = rotating(m, n, k, seed=n + k)
        arch = config_arch(torch.device("cuda"))
        base, table_layout = pick_config(m, n, k, arch), weight_layout(arch)
        try:
            want = mxfp4_gemm(*data(0), config=base).float()
        except Exception:  # the config's own row records the error below
            want = None
        for name in ("config", *SWEEP_VARIANTS):
            cfg, layout = variant_config(base, name, bucket_of(m), table_layout)
            row: dict[str, Any] = {"variant": name, "bucket": bucket_of(m), "nk": f"{n}x{k}", "w_layout": layout,
                                   "config": cfg, "current": name == "config"}  # fmt: skip
            impl = "speedrun" if layout == table_layout else "speedrun_plain"  # other layouts: not tunable
            if time.time() - t0 > budget_s:
                rows.append({**_row(impl, gpu, m, n, k, None), **row, "skipped": True})
                continue
            try:
                got = ours(data, 0, layout, cfg)().float()
                if want is not None:
                    row["max_rel_diff_vs_config"] = round(((got - want).abs().max() / want.abs().max()).item(), 5)
                us = time_graph([ours(data, i, layout, cfg) for i in range(copies(_bytes(m, n, k, False)))])
                rows.append({**_row(impl, gpu, m, n, k, us), **row})
            except Exception as exc:
                rows.append({**_row(impl, gpu, m, n, k, None, f"{type(exc).__name__}: {exc}"), **row})
        done = [r for r in rows if (r["m"], r["n"], r["k"]) == (m, n, k) and r.get("us")]
        for r in sorted(done, key=lambda r: r["us"]):
            print(f"sweep ({m},{n},{k}) {r['variant']:16} {r['us']:9.2f} us {r.get('hbm_pct', '-'):>5} %HBM")
        del data
        torch.cuda.empty_cache()
    return rows


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(dict.fromkeys((r["m"], r["n"], r["k"]) for r in rows))
    fig, ax = plt.subplots(figsize=(max(10, len(keys) * 0.35), 5))
    for i, impl in enumerate(("speedrun", "dequant_cublas", "bf16_cublas")):
        us = {(r["m"], r["n"], r["k"]): r.get("us") for r in rows if r["impl"] == impl}
        xs = [j + (i - 1) * 0.27 for j in range(len(keys))]
        ax.bar(xs, [us.get(key) or 0 for key in keys], width=0.27, label=impl)
    ax.set_yscale("log")
    ax.set_ylabel("us per call (CUDA graph, L2 flushed)")
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([f"{m}x{n}x{k}" for m, n, k in keys], rotation=90, fontsize=7)
    ax.legend()
    ax.set_title(f"MXFP4 GEMM (M x N x K) on {rows[0]['gpu']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def summary(rows: list[dict[str, Any]]) -> None:
    by = {(r["impl"], r["m"], r["n"], r["k"]): r for r in rows}
    head = ("M", "N", "K", "route", "ours us", "eager", "deq+cuBLAS", "bf16", "x deq", "x bf16", "HBM%")
    widths = (6, 6, 6, 9, 9, 8, 10, 8, 6, 6, 5)
    print(" ".join(f"{h:>{w}}" for h, w in zip(head, widths, strict=True)))
    for _, m, n, k in [key for key in by if key[0] == "speedrun"]:
        ours, deq, bf = (by.get((i, m, n, k), {}).get("us") for i in ("speedrun", "dequant_cublas", "bf16_cublas"))
        row = by[("speedrun", m, n, k)]
        x_deq = f"{deq / ours:.2f}" if ours and deq else "-"
        x_bf = f"{ours / bf:.2f}" if ours and bf else "-"
        cells = (m, n, k, row.get("route", "-"), ours or "-", row.get("us_eager") or "-", deq or "-", bf or "-",
                 x_deq, x_bf, row.get("hbm_pct", "-"))  # fmt: skip
        print(" ".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True)))


def meta(gpu: str, sweep: bool) -> dict[str, Any]:
    from speedrun.overlays.mxfp4_gemm.gemm import BUCKETS

    out = {"op": "mxfp4_gemm", "gpu": gpu, "hbm_peak_gbps": HBM_PEAK_GBS, "us": GRAPH_METHOD,
           "bytes": "MXFP4 W (N*K/2 + N*K/32) + bf16 A + bf16 C; bf16_cublas counts bf16 W (N*K*2)"}  # fmt: skip
    if sweep:
        out["bucket"] = f"M bucket key of configs/<arch>.json 'default' (upper bounds {BUCKETS}, else 'max')"
        out["nk"] = "per-shape override key 'NxK' in the same file"
        out["variants"] = SWEEP_VARIANTS
    else:
        out["us_eager"] = EAGER_METHOD
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("."))
    ap.add_argument("--sweep", action="store_true", help="only time the variants (tuning): DIR/mxfp4_gemm_sweep.json")
    ap.add_argument("--budget", type=float, default=SWEEP_BUDGET_S, help="sweep: seconds before skipping the rest")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench needs a GPU")
        return 2
    torch.manual_seed(0)
    gpu = torch.cuda.get_device_name()
    t0, rows = time.time(), []
    args.out.mkdir(parents=True, exist_ok=True)
    if args.sweep:
        rows = sweep_rows(gpu, args.budget)
        out = args.out / "mxfp4_gemm_sweep.json"
        out.write_text(json.dumps({"meta": meta(gpu, True), "rows": rows}, indent=1))
        print(f"wrote {out} in {time.time() - t0:.0f} s")
        return 0 if all(r.get("us") or r.get("skipped") for r in rows) else 1
    lut = _lut(torch.device("cuda"))
    for m, n, k in shapes():
        rows += bench_shape(m, n, k, gpu, lut)
        torch.cuda.empty_cache()
    (args.out / "mxfp4_gemm.json").write_text(json.dumps({"meta": meta(gpu, False), "rows": rows}, indent=1))
    plot(rows, args.out / "mxfp4_gemm.png")
    summary(rows)
    print(f"wrote {args.out / 'mxfp4_gemm.json'} in {time.time() - t0:.0f} s (HBM peak {HBM_PEAK_GBS} GB/s nominal)")
    return 0 if all(r.get("us") for r in rows if r["impl"] == "speedrun") else 1


if __name__ == "__main__":
    raise SystemExit(main())
