"""Throughput scenarios against one running server: warm-up, measured run, metrics, traces, one entry each.

Each case: `warmup` requests (OSL capped at 32, as SGLang's bench does) with their own prompts, then
`prompts` random-id requests at the case's concurrency. Every finished case is written before the next
starts; a case that fails is recorded with its reason (and the server log tail) and the others still run,
unless the server is gone, in which case the rest are recorded as skipped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from speedrun.eval import sglang_driver
from speedrun.eval.client import GenRequest, run_requests
from speedrun.eval.metrics import summarize
from speedrun.eval.prompts import TokenPool, random_prompts
from speedrun.eval.results import ResultsFile, save_traces
from speedrun.eval.scenarios import Case

WARMUP_OSL = 32


@dataclass
class Target:
    """Where to send requests, and how to tell whether the server is still there."""

    url: str
    alive: Callable[[], bool] | None = None
    log_tail: Callable[[], str] | None = None


def progress_bar(show: bool = True) -> Progress:
    """The progress display of every measurement (bench cases, GSM8K, agreement): what, bar, done/total, time.
    On a non-terminal (logs, CI) rich prints only the final state, so logs are not flooded."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(*columns, disable=not show)


def requests_for(case: Case, pool: TokenPool, seed: int, warmup: bool = False) -> list[GenRequest]:
    n = case.warmup if warmup else case.prompts
    osl = min(case.osl, WARMUP_OSL) if warmup else case.osl
    s = case.seed(seed) + (7 if warmup else 0)
    return [GenRequest(ids, o) for ids, o in random_prompts(pool, n, case.isl, osl, case.range_ratio, s)]


def status_of(metrics: dict[str, Any], reason: str) -> str:
    if reason.startswith("scenario timed out"):
        return "timeout"
    if metrics["completed"] == 0:
        return "failed"
    return "partial" if metrics["failed"] else "ok"


def first_error(traces: list) -> str:
    errs = [t.error for t in traces if t.error]
    return f"{len(errs)} request(s) failed; first: {errs[0]}" if errs else ""


def run_case(
    case: Case,
    target: Target,
    pool: TokenPool,
    *,
    gpus: int,
    seed: int,
    timeout_s: float,
    progress: Progress,
    traces_dir: Path | None,
    side: str,
) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": case.name, "case": case.to_dict()}
    if case.warmup:
        task = progress.add_task(f"{side} {case.name} warm-up", total=case.warmup)
        warm, _ = asyncio.run(
            run_requests(
                target.url,
                requests_for(case, pool, seed, True),
                case.concurrency,
                ignore_eos=case.ignore_eos,
                timeout_s=timeout_s,
                alive=target.alive,
                on_done=lambda _t: progress.advance(task),
            )
        )
        progress.remove_task(task)
        entry["warmup_failed"] = sum(not t.success for t in warm)
        if not any(t.success for t in warm):
            dead = "server died; " if target.alive is not None and not target.alive() else ""
            return entry | {"status": "failed", "error": f"{dead}warm-up failed: {first_error(warm)}"}
    reqs = requests_for(case, pool, seed)
    task = progress.add_task(f"{side} {case.name}", total=len(reqs))
    traces, duration = asyncio.run(
        run_requests(
            target.url,
            reqs,
            case.concurrency,
            ignore_eos=case.ignore_eos,
            request_rate=case.request_rate,
            seed=case.seed(seed),
            timeout_s=timeout_s,
            alive=target.alive,
            on_done=lambda _t: progress.advance(task),
        )
    )
    metrics = summarize(traces, duration, gpus)
    reason = next((t.error for t in traces if t.error.startswith(("scenario timed out", "server died"))), "")
    if not reason and metrics["failed"] and target.alive is not None and not target.alive():
        reason = f"server died; {first_error(traces)}"
    entry |= {"status": status_of(metrics, reason), "metrics": metrics, "error": reason or first_error(traces)}
    if traces_dir is not None:
        path = traces_dir / f"{side}-{case.name}.json.gz"
        save_traces(path, traces)
        entry["traces"] = str(path.name)
    return entry


def run_cases(
    cases: list[Case],
    target: Target,
    pool: TokenPool,
    results: ResultsFile,
    *,
    gpus: int,
    seed: int = 0,
    timeout_s: float = 1800,
    traces_dir: Path | None = None,
    side: str = "server",
    show_progress: bool = True,
    driver: str = "speedrun",
    tokenizer: str | None = None,
) -> list[dict[str, Any]]:
    """Run every case in order; returns the entries (also appended to `results` one by one).

    driver "sglang" measures with `sglang.bench_serving` instead of our client (a cross-check)."""
    out = []
    with progress_bar(show_progress) as progress:
        for case in cases:
            if target.alive is not None and not target.alive():
                entry = {"name": case.name, "case": case.to_dict(), "status": "skipped", "error": "server died"}
            elif driver == "sglang":
                entry = sglang_driver.run_case(
                    case,
                    target.url,
                    traces_dir or results.path.parent,
                    gpus=gpus,
                    tokenizer=tokenizer,
                    seed=seed,
                    timeout_s=timeout_s,
                    side=side,
                )
            else:
                entry = run_case(
                    case,
                    target,
                    pool,
                    gpus=gpus,
                    seed=seed,
                    timeout_s=timeout_s,
                    progress=progress,
                    traces_dir=traces_dir,
                    side=side,
                )
            if entry["status"] != "ok" and target.log_tail is not None:
                entry["log_tail"] = target.log_tail()
            results.add_scenario(entry)
            out.append(entry)
            progress.console.print(one_line(side, entry))
    return out


def one_line(side: str, e: dict[str, Any]) -> str:
    m = e.get("metrics")
    if not m:
        return f"[red]{side} {e['name']}: {e['status']}: {escape(e.get('error', ''))}[/red]"
    inter = m["interactivity"] or 0.0
    color = "green" if e["status"] == "ok" else "yellow"
    return (
        f"[{color}]{side} {e['name']}: {e['status']}[/{color}]  {m['total_throughput_per_gpu']:.0f} tok/s/GPU  "
        f"{inter:.1f} tok/s/user  e2e {m['median_e2e_latency_ms'] / 1000:.2f} s  "
        f"TTFT {m['median_ttft_ms']:.0f} ms  ({m['completed']} ok, {m['failed']} failed)"
    )
