"""`--driver sglang`: the same case measured by SGLang's own `bench_serving` (random-ids, tokenized prompts),
its JSONL result mapped onto our metric names. A cross-check of our client; it keeps no per-request traces."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from speedrun.eval.scenarios import Case

KEEP = (
    "duration",
    "completed",
    "total_input_tokens",
    "total_output_tokens",
    "request_throughput",
    "input_throughput",
    "output_throughput",
    "total_throughput",
    "concurrency",
)


def command(case: Case, url: str, out_file: Path, tokenizer: str | None, seed: int) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "sglang.bench_serving",
        "--backend",
        "sglang",
        "--base-url",
        url,
        "--dataset-name",
        "random-ids",
        "--tokenize-prompt",
        "--random-input-len",
        str(case.isl),
        "--random-output-len",
        str(case.osl),
        "--random-range-ratio",
        str(case.range_ratio),
        "--num-prompts",
        str(case.prompts),
        "--max-concurrency",
        str(case.concurrency),
        "--warmup-requests",
        str(case.warmup),
        "--request-rate",
        str(case.request_rate),
        "--output-file",
        str(out_file),
        "--seed",
        str(case.seed(seed)),
        "--disable-tqdm",
    ]
    if not case.ignore_eos:
        argv.append("--disable-ignore-eos")
    if tokenizer:
        argv += ["--tokenizer", tokenizer]
    return argv


def to_metrics(row: dict[str, Any], prompts: int, gpus: int) -> dict[str, Any]:
    """SGLang's result row -> our metric dict (same definitions, so only names and the per-GPU figures change)."""
    m = {k: row[k] for k in KEEP if k in row}
    m["duration_s"] = m.pop("duration", 0.0)
    for name in ("ttft", "tpot", "itl", "e2e_latency"):
        for stat in ("mean", "median", "std", "p90", "p99"):
            key = f"{stat}_{name}_ms"
            if key in row:
                m[key] = row[key]
    m["failed"] = prompts - int(row.get("completed", 0))
    m["gpus"] = gpus
    m["total_throughput_per_gpu"] = row.get("total_throughput", 0.0) / gpus
    m["output_throughput_per_gpu"] = row.get("output_throughput", 0.0) / gpus
    tpot = row.get("median_tpot_ms") or 0.0
    m["interactivity"] = 1000.0 / tpot if tpot > 0 else None
    return m


def run_case(
    case: Case, url: str, work_dir: Path, *, gpus: int, tokenizer: str | None, seed: int, timeout_s: float, side: str
) -> dict[str, Any]:
    out_file = work_dir / f"sglang-bench-{side}-{case.name}.jsonl"
    log = work_dir / f"sglang-bench-{side}-{case.name}.log"
    out_file.unlink(missing_ok=True)
    argv = command(case, url, out_file, tokenizer, seed)
    entry: dict[str, Any] = {"name": case.name, "case": case.to_dict(), "driver": "sglang", "argv": argv}
    try:
        with open(log, "w") as f:
            rc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, timeout=timeout_s).returncode
    except subprocess.TimeoutExpired:
        return entry | {"status": "timeout", "error": f"sglang.bench_serving timed out after {timeout_s:.0f} s"}
    rows = [json.loads(x) for x in out_file.read_text().splitlines() if x.strip()] if out_file.exists() else []
    if rc != 0 or not rows:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        return entry | {"status": "failed", "error": f"sglang.bench_serving exit {rc}:\n{tail}"}
    m = to_metrics(rows[-1], case.prompts, gpus)
    status = "ok" if m["failed"] == 0 else ("failed" if m.get("completed", 0) == 0 else "partial")
    return entry | {"status": status, "metrics": m, "error": ""}
