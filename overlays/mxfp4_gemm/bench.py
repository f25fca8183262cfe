"""MXFP4 GEMM benchmark (one run, one GPU): ours vs dequant+cuBLAS vs bf16 cuBLAS.

impl `speedrun`: our GEMM from bf16 activations, MXFP4 activation quantization included.
impl `dequant_cublas`: W dequantized to bf16 in torch on every call (LUT gather + scale), then torch.matmul.
impl `bf16_cublas`: torch.matmul with weights dequantized beforehand (the bf16 compute ceiling; no quantization).
Timing: triton.testing.do_bench median, L2 flushed before every rep (256 MB write), CUDA events.
GB/s counts minimal bytes: MXFP4 W (N*K/2 + N*K/32) + bf16 A + bf16 C; bf16_cublas counts bf16 W (N*K*2).
HBM % uses 3.35 TB/s (H100 SXM nominal). `--sweep` times only the variants (SWEEP_VARIANTS) at the decode shapes
and writes DIR/mxfp4_gemm_sweep.json (rows carry `variant` and `config`; the best per shape is printed).

python -m speedrun.overlays.mxfp4_gemm.bench --out DIR   -> DIR/mxfp4_gemm.json, DIR/mxfp4_gemm.png
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from speedrun.overlays.mxfp4_gemm.shapes import BRIEF, DEEPSEEK_NK, PREFILL_M, PREFILL_NK

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


def _bytes(m: int, n: int, k: int, bf16_w: bool) -> int:
    w = n * k * 2 if bf16_w else n * k // 2 + n * k // 32
    return w + m * k * 2 + m * n * 2


def _time(fn: Any) -> float:
    import triton.testing

    return triton.testing.do_bench(fn, warmup=10, rep=60, return_mode="median") * 1e3  # us


def _row(impl: str, gpu: str, m: int, n: int, k: int, us: float | None, err: str | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"impl": impl, "gpu": gpu, "m": m, "n": n, "k": k, "us": us}
    if us:
        gbps = _bytes(m, n, k, impl == "bf16_cublas") / us / 1e3
        row.update(gbps=round(gbps, 1), hbm_pct=round(100 * gbps / HBM_PEAK_GBS, 1),
                   tflops=round(2 * m * n * k / us / 1e6, 2), us=round(us, 2))  # fmt: skip
    if err:
        row["error"] = err[:300]
    return row


def bench_shape(m: int, n: int, k: int, gpu: str, lut: torch.Tensor) -> list[dict[str, Any]]:
    from speedrun.overlays.mxfp4_gemm.gemm import mxfp4_gemm
    from speedrun.overlays.mxfp4_gemm.reference import random_mxfp4_weight

    w, ws = random_mxfp4_weight(n, k, seed=m + n, device="cuda")
    a = torch.randn(m, k, device="cuda").to(torch.bfloat16)
    impls = {
        "speedrun": lambda: mxfp4_gemm(a, w, ws),
        "dequant_cublas": lambda: torch.matmul(a, torch_dequant(w, ws, lut).t()),
    }
    rows = []
    for impl, fn in impls.items():
        try:
            rows.append(_row(impl, gpu, m, n, k, _time(fn)))
        except Exception as exc:  # a failing impl is a row, not the end of the run
            rows.append(_row(impl, gpu, m, n, k, None, f"{type(exc).__name__}: {exc}"))
    try:
        wb = torch_dequant(w, ws, lut)
        rows.append(_row("bf16_cublas", gpu, m, n, k, _time(lambda: torch.matmul(a, wb.t()))))
    except Exception as exc:
        rows.append(_row("bf16_cublas", gpu, m, n, k, None, f"{type(exc).__name__}: {exc}"))
    return rows


SWEEP_SHAPES = ((1, 36864, 7168), (16, 7168, 16384), (16, 2112, 7168), (64, 7168, 2048))
# Each variant overrides the tuned config: the previous default (generic decode + fused A-quant), the fast decode
# interleaved (deq 1) or as halves (deq 2), fused vs pre-quantized A, and tile/pipeline alternatives.
SWEEP_VARIANTS = {
    "old_deq0_fused": {"deq": 0, "route": "fused"},
    "deq2_fused": {"deq": 2, "route": "fused"},
    "deq1_prequant": {"deq": 1, "route": "prequant", "fused_below_nk": 0},
    "deq2_prequant": {"deq": 2, "route": "prequant", "fused_below_nk": 0},
    "deq2_prequant_bk256": {"deq": 2, "route": "prequant", "fused_below_nk": 0, "BLOCK_K": 256, "num_stages": 4},
    "deq2_prequant_bn128w8": {
        "deq": 2,
        "route": "prequant",
        "fused_below_nk": 0,
        "BLOCK_N": 128,
        "num_warps": 8,
        "num_stages": 4,
    },
    "deq2_prequant_st3": {"deq": 2, "route": "prequant", "fused_below_nk": 0, "num_stages": 3},
    "deq3_prequant": {"deq": 3, "route": "prequant", "fused_below_nk": 0},
    "deq2_prequant_sk1": {"deq": 2, "route": "prequant", "fused_below_nk": 0, "SPLIT_K": 1},
}


def sweep_rows(gpu: str) -> list[dict[str, Any]]:
    """Every SWEEP_VARIANTS entry on the decode shapes (tuning aid; prints the best per shape)."""
    from speedrun.overlays.mxfp4_gemm.gemm import config_arch, mxfp4_gemm, pick_config
    from speedrun.overlays.mxfp4_gemm.reference import random_mxfp4_weight

    rows = []
    for m, n, k in SWEEP_SHAPES:
        w, ws = random_mxfp4_weight(n, k, device="cuda")
        a = torch.randn(m, k, device="cuda").to(torch.bfloat16)
        base = pick_config(m, n, k, config_arch(a.device))
        try:
            want = mxfp4_gemm(a, w, ws, config=base).float()
        except Exception:  # the config's own row records the error below
            want = None
        for name, var in {"config": {}, **SWEEP_VARIANTS}.items():
            cfg = {**base, **var}
            row: dict[str, Any] = {"variant": name, "config": cfg}
            try:
                got = mxfp4_gemm(a, w, ws, config=cfg).float()
                if want is not None:
                    row["max_rel_diff_vs_config"] = round(((got - want).abs().max() / want.abs().max()).item(), 5)
                us = _time(lambda a=a, w=w, ws=ws, cfg=cfg: mxfp4_gemm(a, w, ws, config=cfg))
                rows.append({**_row("speedrun", gpu, m, n, k, us), **row})
            except Exception as exc:
                rows.append({**_row("speedrun", gpu, m, n, k, None, f"{type(exc).__name__}: {exc}"), **row})
        done = [r for r in rows if (r["m"], r["n"], r["k"]) == (m, n, k) and r.get("us")]
        for r in sorted(done, key=lambda r: r["us"]):
            print(f"sweep ({m},{n},{k}) {r['variant']:24} {r['us']:9.2f} us {r.get('hbm_pct', '-'):>5} %HBM")
        del w, ws
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
    ax.set_ylabel("us (median, L2 flushed)")
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([f"{m}x{n}x{k}" for m, n, k in keys], rotation=90, fontsize=7)
    ax.legend()
    ax.set_title(f"MXFP4 GEMM (M x N x K) on {rows[0]['gpu']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def summary(rows: list[dict[str, Any]]) -> None:
    by = {(r["impl"], r["m"], r["n"], r["k"]): r for r in rows}
    head = ("M", "N", "K", "ours us", "deq+cuBLAS", "bf16", "x deq", "x bf16", "HBM%")
    print(" ".join(f"{h:>{w}}" for h, w in zip(head, (6, 6, 6, 9, 10, 8, 6, 6, 5), strict=True)))
    for _, m, n, k in [key for key in by if key[0] == "speedrun"]:
        ours, deq, bf = (by.get((i, m, n, k), {}).get("us") for i in ("speedrun", "dequant_cublas", "bf16_cublas"))
        x_deq = f"{deq / ours:.2f}" if ours and deq else "-"
        x_bf = f"{ours / bf:.2f}" if ours and bf else "-"
        hbm = by[("speedrun", m, n, k)].get("hbm_pct", "-")
        print(f"{m:>6} {n:>6} {k:>6} {ours or '-':>9} {deq or '-':>10} {bf or '-':>8} {x_deq:>6} {x_bf:>6} {hbm:>5}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("."))
    ap.add_argument("--sweep", action="store_true", help="only time the variants (tuning): DIR/mxfp4_gemm_sweep.json")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench needs a GPU")
        return 2
    torch.manual_seed(0)
    gpu = torch.cuda.get_device_name()
    lut = _lut(torch.device("cuda"))
    t0, rows = time.time(), []
    if args.sweep:
        args.out.mkdir(parents=True, exist_ok=True)
        rows = sweep_rows(gpu)
        (args.out / "mxfp4_gemm_sweep.json").write_text(json.dumps(rows, indent=1))
        print(f"wrote {args.out / 'mxfp4_gemm_sweep.json'} in {time.time() - t0:.0f} s")
        return 0 if all(r.get("us") for r in rows) else 1
    for m, n, k in shapes():
        rows += bench_shape(m, n, k, gpu, lut)
        torch.cuda.empty_cache()
    args.out.mkdir(parents=True, exist_ok=True)
    main_rows = [r for r in rows if "config" not in r]
    (args.out / "mxfp4_gemm.json").write_text(json.dumps(rows, indent=1))
    plot(main_rows, args.out / "mxfp4_gemm.png")
    summary(main_rows)
    print(f"wrote {args.out / 'mxfp4_gemm.json'} in {time.time() - t0:.0f} s (HBM peak {HBM_PEAK_GBS} GB/s nominal)")
    return 0 if all(r.get("us") for r in main_rows if r["impl"] == "speedrun") else 1


if __name__ == "__main__":
    raise SystemExit(main())
