"""`speedrun profile`: where a server's decode time goes, per side, from SGLang's own torch profiler.

On a live server (launched from the recipe, or `--server`): warm up at the chosen concurrency, ask SGLang to
profile the next `steps` forward passes (`/start_profile` with `num_steps`: it stops and writes the Chrome
trace itself), keep decoding meanwhile, then read the trace: GPU kernels summed by name and by op category
(attention / moe / gemm / ...), and how busy the GPU was over the profiled span (a low busy fraction means
the step is bound by the host, not by any kernel).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from speedrun.eval.client import GenRequest, payload, post_json, session
from speedrun.eval.prompts import TokenPool, random_prompts
from speedrun.recipe import Recipe, Side

# Kernel name -> op category (first match wins); names of SGLang's, flashinfer's, triton_kernels' and ours.
CATEGORIES = (
    (
        "moe",
        r"moe|expert|matmul_ogs|topk|routing|_gemm[12]_kernel|align_block|_align_small|sort|(?<!mla_)combine_kernel"
        r"|quant_rows_kernel|quant_fp8_rows_kernel",
    ),  # ours too: the MoE's quantizers and combine (FlashMLA's split-KV combine is attention)
    ("norm/act", r"norm|silu|gelu|swiglu|act_and_mul|rotary|rope"),
    ("attention", r"mla|attn|attention|fmha|_fwd_kernel|_fwd_grouped_kernel|decode_|extend|merge_state"),
    ("gemm", r"gemm|gemv|matmul|cublas|cutlass|sm90_xmma|nvjet|wgmma|mxfp4|fp8|quant"),
    ("memory", r"copy|memcpy|memset|fill|cat|index|gather|scatter|elementwise"),
)


def category(name: str) -> str:
    low = name.lower()
    return next((cat for cat, pat in CATEGORIES if re.search(pat, low)), "other")


def load_trace(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        data = json.load(f)
    return data.get("traceEvents", data) if isinstance(data, dict) else data


def busy_time(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals (kernels on several streams overlap)."""
    total, end = 0.0, float("-inf")
    for s, e in sorted(intervals):
        if s > end:
            total += e - s
            end = e
        elif e > end:
            total += e - end
            end = e
    return total


def summarize(events: list[dict[str, Any]], cat: str = "kernel", top: int = 25) -> dict[str, Any]:
    """Complete events (`ph` X) of category `cat` ('kernel': GPU kernels; 'cpu_op' for a CPU-only trace)."""
    rows: dict[str, list[float]] = defaultdict(list)
    spans = []
    for ev in events:
        if ev.get("ph") == "X" and ev.get("cat") == cat and "dur" in ev:
            rows[ev["name"]].append(float(ev["dur"]))
            spans.append((float(ev["ts"]), float(ev["ts"]) + float(ev["dur"])))
    total = sum(sum(v) for v in rows.values())
    kernels = sorted(
        ({"name": n, "category": category(n), "count": len(v), "total_us": sum(v), "avg_us": sum(v) / len(v)}
         for n, v in rows.items()),
        key=lambda r: -r["total_us"],
    )  # fmt: skip
    by_cat: dict[str, float] = defaultdict(float)
    for k in kernels:
        by_cat[k["category"]] += k["total_us"]
        k["pct"] = 100 * k["total_us"] / total if total else 0.0
    span = (max(e for _, e in spans) - min(s for s, _ in spans)) if spans else 0.0
    busy = busy_time(spans)
    return {
        "events": cat,
        "kernel_time_us": total,
        "span_us": span,
        "busy_us": busy,
        "busy_fraction": busy / span if span else 0.0,
        "categories": {
            c: {"total_us": t, "pct": 100 * t / total if total else 0.0}
            for c, t in sorted(by_cat.items(), key=lambda x: -x[1])
        },  # fmt: skip
        "kernels": kernels[:top],
    }


def wait_for_traces(folder: Path, timeout_s: float = 120, settle_s: float = 2.0, want: str = "-DECODE") -> list[Path]:
    """SGLang writes a stage's trace after its last profiled pass: wait for a file named `want` whose size has
    stopped changing; at the deadline, take whatever traces were written."""

    def listing() -> list[Path]:
        return sorted(folder.rglob("*.trace.json*")) if folder.is_dir() else []

    deadline, last = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        files = listing()
        sizes = [f.stat().st_size for f in files]
        if any(want in f.name for f in files) and sizes == last:
            return files
        last = sizes
        time.sleep(settle_s)
    if files := listing():
        return files
    raise TimeoutError(f"no profiler trace appeared under {folder} within {timeout_s:.0f} s")


def decode_traces(files: list[Path]) -> list[Path]:
    """The decode-stage traces (`...-DECODE.trace.json.gz`) when SGLang split them by stage, else all."""
    decode = [f for f in files if "-DECODE" in f.name]
    return decode or files


async def _load(url: str, reqs: list[GenRequest], concurrency: int, profile: dict[str, Any] | None) -> None:
    sem = asyncio.Semaphore(concurrency)
    async with session() as http:
        if profile is not None:  # armed before the requests: it counts the next forward passes
            async with http.post(f"{url}/start_profile", json=profile) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"/start_profile: HTTP {resp.status}: {(await resp.text())[:300]}")

        async def one(r: GenRequest) -> None:
            async with sem:
                await post_json(http, f"{url}/generate", payload(r, True, False))

        await asyncio.gather(*(one(r) for r in reqs))


def profile_server(
    url: str, pool: TokenPool, out: Path, *, concurrency: int, isl: int, osl: int, steps: int, seed: int = 0
) -> dict[str, Any]:
    """Warm up, profile `steps` forward passes under `concurrency` requests of isl/osl, summarize the trace."""
    if osl < steps + 8:
        raise ValueError(f"--osl {osl} is too short to profile {steps} decode steps (needs >= {steps + 8})")
    rows = random_prompts(pool, concurrency, isl, osl, 1.0, seed)
    reqs = [GenRequest(ids, n) for ids, n in rows]
    asyncio.run(_load(url, reqs, concurrency, None))  # warm-up: compiles, graph capture paths
    out.mkdir(parents=True, exist_ok=True)
    # by stage: SGLang traces the batch's prefill and the next `steps` decode passes into separate files. GPU
    # kernels only, without Python stacks: the summary reads kernels, and at ISL 8192 the prefill trace with CPU
    # ops and stacks was ~180 MB of JSON, still being written when a device call's deadline ended the run
    prof = {"output_dir": str(out.resolve()), "num_steps": steps, "profile_by_stage": True, "activities": ["GPU"],
            "with_stack": False, "record_shapes": False}  # fmt: skip
    asyncio.run(_load(url, reqs, concurrency, prof))
    traces = decode_traces(wait_for_traces(out))
    events = [ev for t in traces for ev in load_trace(t)]
    cat = "kernel" if any(ev.get("cat") == "kernel" for ev in events) else "cpu_op"
    return {"concurrency": concurrency, "isl": isl, "osl": osl, "steps": steps,
            "traces": [str(t) for t in traces], **summarize(events, cat)}  # fmt: skip


def profile_sides(
    recipe: Recipe,
    sides: list[Side],
    out: Path,
    *,
    server: str | None = None,
    startup_timeout_s: float = 1200.0,
    show_progress: bool = True,
    on_error: Callable[[Side, Exception], None] = lambda side, exc: None,
    **kw: int,
) -> dict[Side, dict[str, Any]]:
    """Each side's profile (`kw`: profile_server's concurrency, isl, osl, steps) on the side launched from the
    recipe, or on `server` (one side). A side that fails is `{"error": ...}` after `on_error`, and the others still
    run. Writes out/profile.json, and out/profile.md when a side has a profile."""
    from speedrun.eval.results import write_json_atomic
    from speedrun.eval.serve import launched, pool_for

    results: dict[Side, dict[str, Any]] = {}
    for s in sides:
        try:
            if server:
                results[s] = profile_server(server.rstrip("/"), pool_for(recipe, url=server), out / s / "trace", **kw)
                continue
            pool = pool_for(recipe, model=_model_or_none(recipe, s))
            with launched(recipe, s, out / s, startup_timeout_s=startup_timeout_s, show_progress=show_progress) as lt:
                results[s] = profile_server(lt[0].url, pool, out / s / "trace", **kw)
        except Exception as exc:  # one side failing still leaves the other's profile
            on_error(s, exc)
            results[s] = {"error": f"{type(exc).__name__}: {exc}"}
    write_json_atomic(out / "profile.json", {"recipe": recipe.name, **kw, "sides": results})
    ok = {k: v for k, v in results.items() if "error" not in v}
    if ok:
        (out / "profile.md").write_text(f"# Decode profile: {recipe.name}\n\n" + compare_md(ok) + "\n")
    return results


def _model_or_none(recipe: Recipe, side: Side) -> str | None:
    from speedrun.eval.serve import model_path

    try:
        return model_path(recipe, side)
    except Exception:  # the launch itself reports it properly
        return None


def per_step(res: dict[str, Any], us: float) -> float:
    return us / max(1, res["steps"])


def compare_md(sides: dict[str, dict[str, Any]]) -> str:
    """Markdown: GPU time per decode step by category and the top kernels, each side; the busy fraction."""
    names = list(sides)

    def heaviest(c: str) -> float:
        return -max(r["categories"].get(c, {}).get("total_us", 0.0) for r in sides.values())

    cats = sorted({c for r in sides.values() for c in r["categories"]}, key=heaviest)
    out = ["| category | " + " | ".join(f"{n} (us/step)" for n in names) + " |", "|:---|" + "---:|" * len(names)]
    for c in cats:
        vals = [per_step(r, r["categories"].get(c, {}).get("total_us", 0.0)) for r in sides.values()]
        out.append(f"| {c} | " + " | ".join(f"{v:,.1f}" for v in vals) + " |")
    vals = [per_step(r, r["kernel_time_us"]) for r in sides.values()]
    out.append("| **all kernels** | " + " | ".join(f"**{v:,.1f}**" for v in vals) + " |")
    busy = [f"{r['busy_fraction']:.0%}" for r in sides.values()]
    out += ["| GPU busy over the profiled span | " + " | ".join(busy) + " |", ""]
    for n, r in sides.items():
        out += [f"Top kernels, {n} ({r['steps']} decode steps, c{r['concurrency']}, ISL {r['isl']}):", "",
                "| kernel | category | us/step | calls/step | % |", "|:---|:---|---:|---:|---:|"]  # fmt: skip
        for k in r["kernels"][:12]:
            name = k["name"] if len(k["name"]) <= 70 else k["name"][:67] + "..."
            out.append(f"| `{name}` | {k['category']} | {per_step(r, k['total_us']):,.1f} | "
                       f"{k['count'] / max(1, r['steps']):.1f} | {k['pct']:.1f} |")  # fmt: skip
        out.append("")
    return "\n".join(out)
