"""One-off: rebuild mxfp4_gemm.json (+ .png) from a GEMM bench's console lines, for a run that printed its rows and
wrote no JSON (round 4's H100 run, before eval/kernels/results.py wrote rows as they complete).

    python scripts/recover_gemm_log.py LOG OUT_DIR --gpu "NVIDIA H100 80GB HBM3" --source "what ran, where, when" \
        --stopped "how it ended"

Reads every "[N s] MxNxK: impl=us, ..." line; rows get the bench's own fields (`_row`: us, GB/s, % of HBM peak,
TFLOP/s; `speedup_vs` on ours) but no `timing` block, p10/p90 or rel_err: the console did not print them.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from speedrun.eval.kernels import mxfp4_gemm_bench as bench
from speedrun.eval.kernels import report, results, timer

LINE = re.compile(r"^\[(\d+) s\] (\d+)x(\d+)x(\d+): (.+)$")


def parse(text: str, gpu: str) -> list[dict[str, Any]]:
    """The bench rows of every progress line in `text`, in order."""
    peak = timer.hbm_peak(gpu)[1]
    rows = []
    for line in text.splitlines():
        if not (hit := LINE.match(line.strip())):
            continue
        m, n, k = (int(v) for v in hit.group(2, 3, 4))
        for cell in hit.group(5).split(", "):
            impl, us = cell.split("=")
            value = None if us == "None" else float(us)
            err = None if value else "not timed (the log gives no reason)"
            rows.append({**bench._row(impl, gpu, m, n, k, value, err, peak=peak), "elapsed_s": int(hit.group(1))})
    report.add_speedups(rows, ("m", "n", "k"))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("log", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--gpu", required=True)
    ap.add_argument("--source", required=True, help="the run: command, card, date")
    ap.add_argument("--stopped", required=True, help="how the run ended (meta 'interrupted')")
    args = ap.parse_args(argv)
    rows = parse(args.log.read_text(errors="replace"), args.gpu)
    if not rows:
        print(f"{args.log}: no '[N s] MxNxK: impl=us, ...' lines")
        return 1
    peak_name, peak = timer.hbm_peak(args.gpu)
    meta = {"op": "mxfp4_gemm", "gpu": args.gpu, "hbm_peak_Bps": peak, "hbm_peak_of": peak_name,
            "recovered": f"rebuilt by scripts/recover_gemm_log.py from the console log of {args.source}; the run "
                         "ended before writing its JSON. Rows carry us (median), GB/s, % HBM peak, TFLOP/s and "
                         "speedup_vs; timing blocks, p10/p90 and rel_err were not printed, so they are absent.",
            "timing": timer.method_meta(), "speedup_vs": "baseline us / our us (> 1: ours faster)"}  # fmt: skip
    done = {(r["m"], r["n"], r["k"]) for r in rows}
    meta["shapes_not_run"] = [f"{m}x{n}x{k}" for m, n, k in bench.shapes() if (m, n, k) not in done]
    args.out.mkdir(parents=True, exist_ok=True)
    res = results.Results(args.out / "mxfp4_gemm.json", meta)
    res.state = {"complete": False, "interrupted": args.stopped}
    res.add(*rows)
    results.finish(rows, res.path, bench.plot, bench.summary)
    print(f"{len(rows)} rows, {len(done)} shapes -> {res.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
