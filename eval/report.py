"""The Markdown report: verdict first, then the side-by-side numbers, accuracy, overlay coverage, and what
was cut or failed (with server log tails)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from speedrun.eval import plots
from speedrun.eval.compare import PAIRED, Comparison, Row, first_line
from speedrun.overlays.report import routes, warmups


def fmt(v: float | None, digits: int = 1, scale: float = 1.0) -> str:
    return "—" if v is None else f"{v * scale:,.{digits}f}"


def ratio(v: float | None) -> str:
    if v is None:
        return "—"
    return f"**{v:.2f}x**" if v >= 1.0 else f"{v:.2f}x"


def table(header: list[str], rows: list[list[str]], numeric: bool = True) -> list[str]:
    """A Markdown table; first column left, the others right-aligned when `numeric`. Pipes in cells escaped."""
    cell = lambda x: str(x).replace("|", "\\|").replace("\n", " ")
    align = "|".join(":---" if i == 0 or not numeric else "---:" for i in range(len(header)))
    out = ["| " + " | ".join(map(cell, header)) + " |", f"|{align}|"]
    return out + ["| " + " | ".join(map(cell, r)) + " |" for r in rows]


SUMMARY = [  # (label, metric, digits, scale, higher_is_better)
    ("tok/s/GPU", "total_throughput_per_gpu", 0, 1.0, True),
    ("tok/s/user", "interactivity", 1, 1.0, True),
    ("median e2e (s)", "median_e2e_latency_ms", 2, 1e-3, False),
    ("median TTFT (ms)", "median_ttft_ms", 0, 1.0, False),
]
DETAIL = (
    [("output tok/s", "output_throughput", 0, 1.0, True), ("total tok/s", "total_throughput", 0, 1.0, True)]
    + [
        (f"{stat} {name} (ms)", f"{stat}_{key}_ms", 1, 1.0, False)
        for name, key in (("TTFT", "ttft"), ("TPOT", "tpot"), ("ITL", "itl"), ("E2E", "e2e_latency"))
        for stat in ("mean", "median", "p90", "p99")
    ]
    + [("duration (s)", "duration_s", 1, 1.0, False)]
)


def summary_table(rows: list[Row]) -> list[str]:
    """One row per scenario, `stock -> overlay` in each cell."""
    header = ["scenario"] + [lbl for lbl, *_ in SUMMARY] + ["speedup (tok/s/GPU)", "status"]
    body = []
    for r in rows:
        cells = [r.name]
        for _, key, d, sc, _ in SUMMARY:
            cells.append(" → ".join(fmt(r.metric(s, key), d, sc) for s in PAIRED))
        status = " / ".join((r.entry(s) or {}).get("status", "missing") for s in PAIRED)
        body.append(cells + [ratio(r.speedup), status])
    return ["Each cell: stock SGLang → overlay.", ""] + table(header, body)


def headline(rows: list[Row]) -> str:
    parts = [f"c{r.case['concurrency']} {ratio(r.speedup)}" for r in rows if r.speedup]
    if not parts:
        return "No scenario finished on both sides."
    groups = sorted({f"ISL {r.case['isl']} / OSL {r.case['osl']}" for r in rows})
    return f"Overlay throughput per GPU vs stock, by concurrency ({'; '.join(groups)}): " + ", ".join(parts)


def describe(case: dict[str, Any]) -> str:
    return (
        f"ISL {case['isl']}, OSL {case['osl']}, concurrency {case['concurrency']}: {case['prompts']} prompts "
        f"after {case['warmup']} warm-up requests; range ratio {case['range_ratio']}, request rate "
        f"{case['request_rate']}, ignore EOS {case['ignore_eos']}"
    )


def detail_table(r: Row) -> list[str]:
    body = []
    for label, key, d, sc, hib in SUMMARY[:2] + DETAIL:
        body.append([label, *(fmt(r.metric(s, key), d, sc) for s in PAIRED), ratio(r.ratio(key, hib))])
    for key in ("completed", "failed"):
        body.append([key, *(fmt(r.metric(s, key), 0) for s in PAIRED), ""])
    return table(["metric", "stock", "overlay", "overlay better by"], body)


def gates_section(c: Comparison) -> list[str]:
    verdict = "PASS" if c.passed else "FAIL"
    out = [f"**Verdict: {verdict}**", ""] + table(
        ["gate", "result", "detail"],
        [[g.name, "pass" if g.passed else "**FAIL**", g.detail] for g in c.gates],
        numeric=False,
    )
    if c.warnings:
        out += ["", "Notes:"] + [f"- {w}" for w in c.warnings]
    return out


def accuracy_section(c: Comparison) -> list[str]:
    out = []
    gb, go = (c.side(s).get("accuracy", {}).get("gsm8k") for s in PAIRED)
    if gb or go:
        body = [
            [
                lbl,
                fmt(g["score_flexible"], 3),
                fmt(g["score_strict"], 3),
                fmt(g["invalid"], 3),
                str(g["questions"]),
                str(g.get("errors", 0)),
                "pass" if g["passed"] else "**FAIL**",
            ]
            for lbl, g in (("stock", gb), ("overlay", go))
            if g
        ]
        out += (
            ["### GSM8K", ""]
            + table(
                [
                    "side",
                    "flexible",
                    "strict",
                    "invalid",
                    "questions",
                    "errors",
                    f"gate (>= {(go or gb)['min_score']})",
                ],
                body,
            )
            + [""]
        )
    if c.agreement:
        a = c.agreement
        out += [
            "### Agreement (same prompts, greedy)",
            "",
            f"- greedy-token match over the first {a['tokens']} tokens (up to each prompt's first divergence): "
            f"**{a['match_rate']:.3f}** (min {a['min_token_match']}); "
            f"{a['prompts_fully_matched']}/{a['prompts']} prompts match fully",
            f"- |logprob diff| on the matched prefix: max {a['max_logprob_diff']:.4g} "
            f"(<= {a['max_logprob_diff_limit']}), mean {a['mean_logprob_diff']:.4g} "
            f"(<= {a['mean_logprob_diff_limit']})",
            f"- first divergence per prompt: {a['first_divergence']}",
            f"- divergences that are near ties (the baseline ranked the overlay's token within "
            f"{a['tie_margin']} nats of its own): {a['near_tie_divergences']}/{len(a['divergences'])}; "
            f"margins: {margins(a)}",
            "",
            *control_lines(c.control_agreement),
        ]
    return out or ["(accuracy not run)", ""]


def margins(a: dict[str, Any]) -> str:
    return ", ".join("outside top-k" if d["margin"] is None else f"{d['margin']:.3g}" for d in a["divergences"]) or "—"


def control_lines(ctl: dict[str, Any] | None) -> list[str]:
    """Stock vs stock (baseline vs the control configuration): the yardstick for rounding-level disagreement."""
    if not ctl:
        return []
    out = [
        f"Control — stock vs stock ({ctl['label']}), same prompts: match **{ctl['match_rate']:.3f}**, "
        f"mean |dlogp| {ctl['mean_logprob_diff']:.4g}, max {ctl['max_logprob_diff']:.4g}, near-tie divergences "
        f"{ctl['near_tie_divergences']}/{len(ctl['divergences'])} (margins: {margins(ctl)})",
        "",
    ]
    cal = ctl.get("calibrated")
    if cal:
        rows = [f"{k}: {v['value']:.4g} vs {v['limit']:.4g} ({'ok' if v['ok'] else 'FAIL'})" for k, v in
                cal["criteria"].items()]  # fmt: skip
        out += [f"Overlay judged against it: {'; '.join(rows)} → **{'pass' if cal['passed'] else 'FAIL'}**", ""]
    return out


def overlay_section(reports: list[dict[str, Any]]) -> list[str]:
    if not reports:
        return ["(no per-process overlay reports)", ""]
    body = []
    for r in reports:
        who = r.get("role", "?") + (f" tp{r['tp_rank']}" if r.get("tp_rank") is not None else "")
        hooks = (
            ", ".join(
                str(h.get("op", h.get("target", h))) if isinstance(h, dict) else str(h) for h in r.get("hooks", [])
            )
            or "—"
        )
        calls = ", ".join(f"{k}: {v}" for k, v in (r.get("calls") or {}).items()) or "—"
        falls = (
            "; ".join(
                f"{h}: {', '.join(f'{why} x{n}' for why, n in reasons.items())}"
                for h, reasons in (r.get("fallbacks") or {}).items()
            )
            or "—"
        )
        by_size = "; ".join(routes(r)) or "—"
        warm = "; ".join(warmups(r)) or "—"
        body.append([who, hooks, calls, by_size, warm, falls, "; ".join(map(str, r.get("errors", []))) or "—"])
    cols = ["process", "hooks", "calls", "routes by size", "load-time warm-up", "fallbacks", "errors"]
    return table(cols, body, numeric=False) + [""]


def failures_section(c: Comparison) -> list[str]:
    out = []
    for label, side in (("stock", c.baseline), ("overlay", c.overlay)):
        for e in side.get("errors", []):
            out += [f"- {label}: **{e['what']}**: {first_line(e.get('message'))}"]
            out += _tail(e.get("log_tail", ""))
        for s in side.get("scenarios", []):
            if s.get("status") != "ok":
                out += [f"- {label} {s['name']}: **{s.get('status')}**: {first_line(s.get('error'))}"]
                out += _tail(s.get("log_tail", ""))
    return out or ["Nothing failed."]


def _tail(text: str) -> list[str]:
    return ["", "  ```", *[f"  {x}" for x in text.splitlines()[-30:]], "  ```"] if text.strip() else []


def baseline_section(c: Comparison) -> list[str]:
    """Which stock configuration the overlay is measured against (searched and locked, or the recipe's)."""
    from speedrun.eval.lock import report_lines

    return report_lines(c.baseline.get("baseline_config"), c.rows)


def profile_section(c: Comparison) -> list[str]:
    """Each side's GPU kernels per decode step by op (`speedrun run --profile-steps`), per concurrency."""
    from speedrun.eval.profile import compare_md

    sides = {"stock": c.baseline.get("decode_profile") or {}, "overlay": c.overlay.get("decode_profile") or {}}
    lines = []
    for conc in sorted({k for prof in sides.values() for k in prof}, key=int):
        have = {name: prof[conc] for name, prof in sides.items() if conc in prof}
        lines += [f"### c{conc}", "", compare_md(have), ""]
    if not lines:
        return []
    return ["## Decode profile (SGLang's torch profiler, GPU kernels per decode step)", "", *lines]


def render(c: Comparison, out_dir: Path, title: str = "") -> Path:
    """Write report.md plus the two PNGs into `out_dir`; returns the Markdown path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plots.frontier(c.rows, out_dir / "throughput_vs_interactivity.png")
    plots.speedup(c.rows, out_dir / "speedup.png")
    b, o = c.baseline, c.overlay
    lines = [
        f"# {title or b.get('recipe', 'speedrun')}: stock SGLang vs speedrun overlay",
        "",
        f"{b.get('description', '')}",
        "",
        *gates_section(c),
        "",
        headline(c.rows),
        "",
        *baseline_section(c),
        "## Throughput",
        "",
        "![throughput vs interactivity](throughput_vs_interactivity.png)",
        "",
        "![speedup](speedup.png)",
        "",
        *summary_table(c.rows),
        "",
    ]
    for r in c.rows:
        lines += [f"### {r.name}", "", describe(r.case), "", *detail_table(r), ""]
    lines += profile_section(c)
    lines += [
        "## Accuracy",
        "",
        *accuracy_section(c),
        "## Overlays (per process, overlay side)",
        "",
        *overlay_section(o.get("overlay_reports", [])),
        "## Cut or failed",
        "",
        *failures_section(c),
        "",
        "## How this was run",
        "",
    ]
    for label, side in (("stock", b), ("overlay", o)):
        lines += [
            f"- {label}: `{side.get('launch', side.get('server_url', '?'))}`",
            f"  (prompts: {side.get('token_source', '?')}; GPUs: {side.get('gpus', '?')}; "
            f"driver: {side.get('driver', 'speedrun')}; started {side.get('created', '?')})",
        ]
    lines += [
        "",
        "Metrics follow SGLang's `bench_serving` definitions (see `speedrun/eval/metrics.py`); "
        "tok/s/GPU = (input + output tokens) / duration / GPUs; tok/s/user = 1000 / median TPOT.",
        "",
    ]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
