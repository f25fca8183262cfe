"""Reads `ncu --page source --print-source sass --csv` on stdin; prints per kernel where its warp-stall samples sit:
each warp-specialized partition's share (the SASS between two USETMAXREG instructions: Gluon's partitions set
their registers first), then the instructions with the most samples and their two largest stall reasons. The CSVs
are 2-7 MB, too large to keep; this summary is what is committed (round 12 read the MLA kernel's this way).

    ncu -i REPORT --page source --print-source sass --csv | python3 scripts/device/ncu_sass_top.py [TOP]
"""

from __future__ import annotations

import csv
import sys

SAMPLES = "Warp Stall Sampling (All Samples)"
REASON = "stall_"  # per-reason sample columns; their "(Not Issued)" twins are left out


def _num(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def kernels(lines: list[str]) -> list[tuple[str, list[dict[str, str]]]]:
    """(kernel name, instruction rows) per kernel in the CSV: a `"Kernel Name",NAME` line, a header, then rows."""
    out: list[tuple[str, list[dict[str, str]]]] = []
    rows = list(csv.reader(lines))
    i = 0
    while i < len(rows):
        r = rows[i]
        if len(r) >= 2 and r[0] == "Kernel Name" and i + 1 < len(rows):
            header, body = rows[i + 1], []
            i += 2
            while i < len(rows) and len(rows[i]) == len(header) and _num(rows[i][2]) is not None:
                body.append(dict(zip(header, rows[i], strict=True)))
                i += 1
            out.append((r[1], body))
        else:
            i += 1
    return out


def summarize(name: str, rows: list[dict[str, str]], top: int = 20) -> str:
    samples = [_num(r.get(SAMPLES, "")) or 0.0 for r in rows]
    total = sum(samples) or 1.0
    reasons = [k for k in (rows[0] if rows else {}) if k.startswith(REASON) and "Not Issued" not in k]
    # partitions: a new one starts at each USETMAXREG (a partition's entry or exit), #0 before the first
    part, starts = [], []
    for i, r in enumerate(rows):
        if "USETMAXREG" in r.get("Source", ""):
            starts.append(i)
        part.append(len(starts))
    out = [f"{name[:120]}: {int(total)} samples, {len(rows)} instructions"]
    if starts:
        share: dict[int, float] = {}
        for p, s in zip(part, samples, strict=True):
            share[p] = share.get(p, 0.0) + s
        out.append("  partitions (SASS between USETMAXREGs): " + ", ".join(f"#{p} {100 * v / total:.1f}%" for p, v in
                                                                            sorted(share.items())))  # fmt: skip
    for i in sorted(range(len(rows)), key=lambda j: -samples[j])[:top]:
        r = rows[i]
        why = sorted(((_num(r[k]) or 0.0, k[len(REASON) :]) for k in reasons), reverse=True)[:2]
        out.append(f"  {100 * samples[i] / total:5.1f}%  #{part[i]} {r.get('Source', '').strip()[:60]:60s} "
                   + ", ".join(f"{k} {int(v)}" for v, k in why if v))  # fmt: skip
    return "\n".join(out)


def main() -> int:
    top = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    for name, rows in kernels(sys.stdin.read().splitlines()):
        if rows:
            print(summarize(name, rows, top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
