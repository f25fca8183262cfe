"""Reads `ncu --page raw --csv` on stdin; prints per kernel launch its duration, DRAM throughput, issue activity
and the warp stall reasons (warps stalled per issued instruction, largest first): where a kernel's time goes.

    ncu -i REPORT --page raw --csv | python3 scripts/device/ncu_stalls.py
"""

from __future__ import annotations

import csv
import sys

STALL = "smsp__average_warps_issue_stalled_"
SUFFIX = "_per_issue_active.ratio"
KEYS = {  # label: raw metric (the value is printed with the unit ncu gives it)
    "time": "gpu__time_duration.sum",
    "dram %": "gpu__dram_throughput.avg.pct_of_peak_sustained_elapsed",
    "issue active %": "sm__inst_issued.avg.pct_of_peak_sustained_active",
    "warps/SM": "sm__warps_active.avg.per_cycle_active",
    "regs": "launch__registers_per_thread",
}


def summarize(rows: list[dict[str, str]], units: dict[str, str]) -> str:
    out = []
    for r in rows:
        name = r.get("Kernel Name", "?")[:90]
        head = ", ".join(f"{k} {r[m]} {units.get(m, '')}".rstrip() for k, m in KEYS.items() if r.get(m))
        stalls = []
        for k, v in r.items():
            if k.startswith(STALL) and k.endswith(SUFFIX):
                try:
                    stalls.append((float(v.replace(",", "")), k[len(STALL) : -len(SUFFIX)]))
                except ValueError:
                    continue
        stalls.sort(reverse=True)
        out.append(f"{name}\n  {head}\n  stalls: " + ", ".join(f"{n} {v:.2f}" for v, n in stalls[:8] if v > 0.01))
    return "\n".join(out)


def main() -> int:
    all_rows = list(csv.DictReader(sys.stdin))
    rows = [r for r in all_rows if r.get("ID", "").strip().isdigit()]
    units = next((r for r in all_rows if not r.get("ID", "").strip()), {})  # the line under the header
    print(summarize(rows, units) if rows else "no kernel rows in the raw page")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
