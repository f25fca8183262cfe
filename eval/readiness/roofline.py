"""ESTIMATE, not a measurement: MI355X roofline time per op and shape, next to what the measured card (H100)
achieved against its own roofline in docs/results/kernels/<op>.json.

Roofline time = max(minimal bytes / HBM bandwidth, FLOPs / dense peak of the format the gfx950 kernel feeds the
matrix unit). "MI355X at the same fraction" divides the MI355X roofline time by the fraction of its roofline the
H100 run reached: a what-if, assuming the kernel is as efficient on CDNA4 as on Hopper, which nothing here
shows (no MI355X was available).

Peaks are the vendors' public datasheet figures (dense, no sparsity), not measured here:
- AMD Instinct MI355X (amd.com product page / datasheet): HBM3E 8.0 TB/s; MXFP4 10.066 PFLOPS, FP8 5.033
  PFLOPS, BF16 2.5166 PFLOPS. Cross-check: 256 CUs x 8192 FP8 FLOP/clk/CU (AMD, ISSCC 2026) x 2.4 GHz = 5.03 PF.
- NVIDIA H100 SXM5 (nvidia.com datasheet): HBM3 3.35 TB/s; BF16 989.4 TFLOPS dense. Our sm90 kernels run bf16
  MMAs for every op (MXFP4 weights and fp8 KV are widened to bf16 first), so BF16 is the H100 compute peak.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from speedrun.eval.pack import read_json, resolve

MI355X = {"hbm": 8.0e12, "MXFP4": 10.066e15, "FP8": 5.033e15, "BF16": 2.5166e15}
H100 = {"hbm": 3.35e12, "BF16": 989.4e12}
META = {
    "estimate": True,
    "note": "MI355X figures are roofline ESTIMATES from AMD's published peak numbers, not measurements.",
    "mi355x_peaks": MI355X,
    "h100_peaks": H100,
    "sources": "AMD Instinct MI355X datasheet (dense peaks, 8 TB/s); NVIDIA H100 SXM datasheet (3.35 TB/s, "
    "989.4 TF BF16 dense)",
}
D_QK, D_V = 576, 512  # MLA: latent + rope dims read for scores, latent dims for the output


def roofline_s(nbytes: float, flops: float, bw: float, peak: float) -> tuple[float, str]:
    """(seconds, "memory" | "compute") of the roofline for one call."""
    t_mem, t_cmp = nbytes / bw, flops / peak
    return (t_mem, "memory") if t_mem >= t_cmp else (t_cmp, "compute")


def mla_work(r: dict[str, Any]) -> tuple[float, float, str]:
    """bytes, FLOPs, gfx950 MMA format of one MLA decode row (KV rows dominate; q and o added)."""
    elt = 1 if "fp8" in r["kv_dtype"] else 2
    kv = r["bs"] * r["kv_len"] * D_QK * elt
    qo = r["bs"] * r["heads"] * (D_QK + D_V) * 2
    flops = 2 * r["bs"] * r["heads"] * r["kv_len"] * (D_QK + D_V)
    return kv + qo, flops, "BF16"  # fp8 KV is widened to bf16 before the dot


def gemm_work(r: dict[str, Any]) -> tuple[float, float, str]:
    """MXFP4 weight (+E8M0 scales per 32), bf16 activations in and out; gfx950 runs the scaled MFMA."""
    m, n, k = r["m"], r["n"], r["k"]
    return n * k / 2 + n * k / 32 + m * k * 2 + m * n * 2, 2 * m * n * k, "MXFP4"


def moe_work(r: dict[str, Any]) -> tuple[float, float, str]:
    """The bench's own minimal bytes; FLOPs of gate+up (2*inter) and down per routed token."""
    flops = 2 * r["m"] * r["topk"] * 3 * r["hidden"] * r["inter"]
    fmt = "MXFP4" if "deepseek" in r.get("model", "") else "BF16"  # w4a4 (DeepSeek) vs w4a16 (GPT-OSS)
    return float(r["bytes"]), flops, fmt


WORK = {"mla_decode": mla_work, "mxfp4_gemm": gemm_work, "mxfp4_moe": moe_work}
SHAPE_KEYS = {"mla_decode": ("bs", "kv_len", "heads", "kv_dtype"), "mxfp4_gemm": ("m", "n", "k"),
              "mxfp4_moe": ("model", "m", "experts", "topk", "hidden", "inter")}  # fmt: skip


def estimate(op: str, r: dict[str, Any]) -> dict[str, Any]:
    """One measured row (impl speedrun) -> shape, MI355X roofline and the H100's fraction of its roofline."""
    nbytes, flops, fmt = WORK[op](r)
    t_mi, bound_mi = roofline_s(nbytes, flops, MI355X["hbm"], MI355X[fmt])
    t_h, bound_h = roofline_s(nbytes, flops, H100["hbm"], H100["BF16"])
    frac = t_h / (r["us"] * 1e-6)
    return {"op": op, "shape": {k: r[k] for k in SHAPE_KEYS[op] if k in r}, "bytes": nbytes, "flops": flops,
            "mi355x_format": fmt, "mi355x_roofline_us": round(t_mi * 1e6, 2), "mi355x_bound": bound_mi,
            "h100_roofline_us": round(t_h * 1e6, 2), "h100_bound": bound_h, "h100_measured_us": r["us"],
            "h100_fraction_of_roofline": round(frac, 3),
            "mi355x_us_at_same_fraction_ESTIMATE": round(t_mi * 1e6 / frac, 2)}  # fmt: skip


def load_rows(path: Path) -> list[dict[str, Any]]:
    data = read_json(path)
    rows = data["rows"] if isinstance(data, dict) else data
    # the fractions use the H100's peaks: rows timed on another card (an H200 lent instead) are left out, and so
    # are mixed-length batches (MLA's "mixed32k": no single kv_len to price)
    return [
        r
        for r in rows
        if r.get("impl") == "speedrun"
        and r.get("us")
        and "H100" in str(r.get("gpu", "H100"))
        and all(isinstance(v, int) for k, v in r.items() if k in ("bs", "kv_len", "m", "n", "k"))
    ]


def table(folder: Path) -> list[dict[str, Any]]:
    """Estimates for every op whose measured JSON is in `folder` (ops without one are skipped; none at all is an
    error: an empty table would read as "nothing measured")."""
    found = {op: path for op in WORK if (path := resolve(Path(folder) / f"{op}.json")).is_file()}
    if not found:
        first, *rest = WORK
        raise FileNotFoundError(f"{Path(folder) / first}.json: no such file (nor {'.json, '.join(rest)}.json)")
    return [estimate(op, r) for op, path in found.items() for r in load_rows(path)]


def markdown(rows: list[dict[str, Any]]) -> str:
    head = ["op", "shape", "MI355X fmt", "MI355X roofline µs (bound)", "H100 measured µs",
            "H100 % of roofline", "MI355X µs at same % (ESTIMATE)"]  # fmt: skip
    lines = ["## MI355X roofline — ESTIMATE from vendor peak figures, not a measurement", "",
             f"Peaks: {META['sources']}. " + META["note"], "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]  # fmt: skip
    for r in rows:
        shape = ", ".join(f"{k}={v}" for k, v in r["shape"].items())
        lines.append(f"| {r['op']} | {shape} | {r['mi355x_format']} | {r['mi355x_roofline_us']} "
                     f"({r['mi355x_bound']}) | {r['h100_measured_us']} | {100 * r['h100_fraction_of_roofline']:.1f} "
                     f"| {r['mi355x_us_at_same_fraction_ESTIMATE']} |")  # fmt: skip
    return "\n".join(lines)
