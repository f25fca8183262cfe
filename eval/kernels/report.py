"""The op benches' report: per shape, ours vs each baseline (speedup = baseline µs / our µs, > 1 means ours is
faster) and our % of the HBM peak, every number from the same timer (timer.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

OURS = "speedrun"


def _groups(rows: list[dict[str, Any]], keys: Sequence[str]) -> dict[tuple, dict[str, dict[str, Any]]]:
    out: dict[tuple, dict[str, dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(tuple(r.get(k) for k in keys), {})[r["impl"]] = r
    return out


def add_speedups(rows: list[dict[str, Any]], keys: Sequence[str], ours: str = OURS) -> None:
    """Our row of each shape (`keys`) gets `speedup_vs`: {baseline impl: baseline us / our us} for every
    baseline measured on that shape."""
    for impls in _groups(rows, keys).values():
        mine = impls.get(ours)
        if not mine or not mine.get("us"):
            continue
        mine["speedup_vs"] = {i: round(r["us"] / mine["us"], 3) for i, r in impls.items() if i != ours and r.get("us")}


def pct_of_peak(nbytes: float, us: float, peak_bytes_per_s: float) -> tuple[float, float]:
    """(GB/s, % of peak) of moving `nbytes` in `us` microseconds."""
    gbps = nbytes / us / 1e3
    return round(gbps, 1), round(100 * gbps * 1e9 / peak_bytes_per_s, 1)


def _us(row: dict[str, Any] | None) -> str:
    if not row:
        return "-"
    if not row.get("us"):
        return "error" if row.get("error") else "-"
    return f"{row['us']:.1f}" + ("*" if row.get("timing", {}).get("method") == "eager" else "")


def table(rows: list[dict[str, Any]], keys: Sequence[str], baselines: Sequence[str], ours: str = OURS,
          extra: Sequence[str] = ()) -> str:  # fmt: skip
    """One line per shape: its key fields, our µs, each baseline's µs, ours' speedup over each baseline, ours'
    % of HBM peak, then `extra` fields of our row. `*` marks a time taken eagerly (capture failed)."""
    head = [*keys, *extra, f"{ours} us", *(f"{b} us" for b in baselines), *(f"x {b}" for b in baselines), "%HBM"]
    lines = [head]
    for key, impls in _groups(rows, keys).items():
        mine = impls.get(ours) or {}
        speed = {b: r["us"] / mine["us"] for b, r in impls.items() if mine.get("us") and r.get("us")}
        cells = [*(str(k) for k in key), *(str(mine.get(e, "-")) for e in extra), _us(mine)]
        cells += [_us(impls.get(b)) for b in baselines]
        cells += [f"{speed[b]:.2f}" if b in speed else "-" for b in baselines]
        cells.append(str(mine.get("pct_hbm_peak", "-")))
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join(" ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in lines)
