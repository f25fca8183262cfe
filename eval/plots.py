"""The finals' chart (throughput per GPU vs interactivity, one curve per side) and speedup per concurrency."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display (CI, device machines)
import matplotlib.pyplot as plt

from speedrun.eval.compare import Row
from speedrun.eval.png import save_png
from speedrun.recipe import Side

SIDES = ((Side.BASELINE, "stock SGLang", "#7f7f7f", "o"), (Side.OVERLAY, "speedrun overlay", "#d62728", "s"))


def groups(rows: list[Row]) -> dict[str, list[Row]]:
    out: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        out[f"ISL {r.case['isl']} / OSL {r.case['osl']}"].append(r)
    for g in out.values():
        g.sort(key=lambda r: r.case["concurrency"])
    return dict(out)


def frontier(rows: list[Row], path: Path, title: str = "") -> Path:
    """x: interactivity (tok/s/user), y: total tok/s per GPU; points labelled with their concurrency."""
    gs = groups(rows)
    fig, axes = plt.subplots(1, max(len(gs), 1), figsize=(6.5 * max(len(gs), 1), 4.8), squeeze=False)
    for ax, (gname, grows) in zip(axes[0], gs.items(), strict=False):
        for side, label, color, marker in SIDES:
            pts = [
                (r.metric(side, "interactivity"), r.metric(side, "total_throughput_per_gpu"), r.case["concurrency"])
                for r in grows
            ]
            pts = [p for p in pts if p[0] and p[1]]
            if not pts:
                continue
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=color, label=label)
            for x, y, c in pts:
                ax.annotate(f"c{c}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8, color=color)
        ax.set(xlabel="interactivity (tok/s/user = 1000 / median TPOT ms)", ylabel="total tok/s per GPU", title=gname)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title or "throughput vs interactivity (up and right is better)")
    fig.tight_layout()
    save_png(fig, path)
    plt.close(fig)
    return path


def speedup(rows: list[Row], path: Path, title: str = "") -> Path:
    """Bars: overlay / baseline total tok/s per GPU, per concurrency, one colour per ISL/OSL group."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    gs = groups(rows)
    width = 0.8 / max(len(gs), 1)
    concs = sorted({r.case["concurrency"] for r in rows})
    for i, (gname, grows) in enumerate(gs.items()):
        by_c = {r.case["concurrency"]: r.speedup for r in grows}
        xs = [j + i * width for j, c in enumerate(concs) if by_c.get(c)]
        ys = [by_c[c] for c in concs if by_c.get(c)]
        bars = ax.bar(xs, ys, width=width, label=gname)
        ax.bar_label(bars, labels=[f"{y:.2f}x" for y in ys], fontsize=8)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([j + width * (len(gs) - 1) / 2 for j in range(len(concs))], [f"c{c}" for c in concs])
    ax.set(
        ylabel="speedup (overlay / stock, tok/s/GPU)",
        xlabel="concurrency",
        title=title or "speedup per concurrency (> 1: overlay faster)",
    )
    if gs:
        ax.legend()
    fig.tight_layout()
    save_png(fig, path)
    plt.close(fig)
    return path
