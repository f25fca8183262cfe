"""`speedrun baseline RECIPE`: serve stock SGLang once per stock configuration the recipe's card supports, run
a short decode-heavy probe on each, and lock the fastest (output tok/s) as the recipe's baseline.

Two stages: the attention backends (the recipe's own configuration first, then the card's candidates, or the
recipe's `baseline:` list), then the MoE runner backends that apply to the model, each on top of the fastest
attention candidate. Everything else the recipe fixes (model, KV dtype, TP, ...) is held. Each candidate is a
`run_side` of the real launch pipeline and bench client, bounded by a startup and a probe timeout; one that
fails to start is reported with its log tail and the search goes on. A search split over several calls
(`--candidates`, same `--out`) keeps what earlier calls measured.

Folder: `candidates/<label>.json` + `candidates/<label>/server.log`, `baseline-search.json` / `.md` (every
candidate, failures with log tails) and `baseline.lock.json` (what `speedrun run` uses).
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from speedrun.eval import lock as locks
from speedrun.eval.lock import BaselineLock, CandidateResult
from speedrun.eval.pack import read_json, resolve
from speedrun.eval.results import write_json_atomic
from speedrun.eval.run import console  # the evaluation's stderr console (progress, per-candidate lines)
from speedrun.eval.scenarios import Case
from speedrun.mainjob import detect
from speedrun.recipe import (
    Accuracy,
    BaselineCandidate,
    Benchmarks,
    Overlays,
    Recipe,
    Scenario,
    Side,
    merged_server,
)

SEARCH_JSON, SEARCH_MD = "baseline-search.json", "baseline-search.md"

# The card's stock attention backends (SGLang 0.5.17, server_args.ATTENTION_BACKEND_CHOICES). FlashMLA serves
# page size 64 only; FA3 loads from sgl_kernel.flash_attn (SGLang tries the kernels-community build first, which
# needs the network), so it is detected by import on the serving host rather than assumed.
ATTENTION: dict[str, list[BaselineCandidate]] = {
    "sm90": [
        BaselineCandidate(label="triton", server={"attention_backend": "triton"}),
        BaselineCandidate(label="flashinfer", server={"attention_backend": "flashinfer"}, requires=["flashinfer"]),
        BaselineCandidate(
            label="flashmla-p64",
            server={"attention_backend": "flashmla", "page_size": 64},
            requires=["sgl_kernel.flash_mla"],
        ),
        BaselineCandidate(label="fa3", server={"attention_backend": "fa3"}, requires=["sgl_kernel.flash_attn"]),
    ],
    "gfx950": [
        BaselineCandidate(
            label="aiter", server={"attention_backend": "aiter"}, env={"SGLANG_USE_AITER": "1"}, requires=["aiter"]
        ),
        BaselineCandidate(label="triton", server={"attention_backend": "triton"}),
    ],
}
MLA_ONLY = {"flashmla", "cutlass_mla", "trtllm_mla", "cutedsl_mla", "tokenspeed_mla"}
# MoE runner backends that apply, by card and the baseline model's quantization (SGLang 0.5.17: server_args.py
# MOE_RUNNER_BACKEND_CHOICES, quantization/fp8.py, arg_groups/overrides.py). The recipe's own choice ("auto" unless
# set) is the first candidate already: auto is triton for block FP8 on one node without DeepEP, aiter on ROCm, and
# triton_kernel for GPT-OSS MXFP4 on sm90, so only the others are listed. cutlass FP8 MoE needs block quantization
# on SM90/100/120; flashinfer_trtllm/_routed/cutedsl are SM100 kernels; flashinfer_cutlass takes modelopt formats.
# flashinfer_mxfp4 on sm90 is FlashInfer's CUTLASS mixed-input MoE (w4a16, Mxfp4MoEMethod._fi_kernel cutlass_sm90).
MOE: dict[tuple[str, str], list[str]] = {
    ("sm90", "fp8_block"): ["cutlass", "deep_gemm"],
    ("sm90", "mxfp4"): ["marlin", "triton", "flashinfer_mxfp4"],
    ("gfx950", "fp8_block"): ["triton"],
}
# What a candidate needs on the serving host: a module that imports, or BUILT + a FlashInfer JIT module's name: built
# already (a flashinfer-jit-cache wheel, or FlashInfer's JIT cache). Its first-use compile (TensorRT-LLM's CUTLASS
# MoE GEMMs for sm90: several hundred kernel instantiations) outlasts any server start timeout, so without the
# built module the candidate is reported as skipped instead of timing out.
BUILT = "flashinfer-built:"
MOE_REQUIRES = {"deep_gemm": ["deep_gemm"], "flashinfer_mxfp4": [BUILT + "fused_moe_90"]}


@dataclass
class Settings:
    """The CLI's choices (scale-downs, time bounds, what to serve this call)."""

    out: Path
    isl: int | None = None
    osl: int | None = None
    concurrency: int | None = None
    prompts_per_concurrency: int | None = None
    warmup_per_concurrency: int | None = None
    startup_timeout_s: float | None = None
    probe_timeout_s: float | None = None
    only: list[str] | None = None  # serve just these labels; the others are read from the folder
    moe: bool = True
    show_progress: bool = True
    python: str = sys.executable
    lock_beside: Path | None = None  # also write the lock here (beside the recipe)


@dataclass
class Planned:
    label: str
    stage: str
    server: dict[str, Any]
    env: dict[str, str] = field(default_factory=dict)
    requires: list[str] = field(default_factory=list)

    def key(self, recipe: Recipe) -> str:
        """Identity of the served configuration: two labels serving the same one are measured once."""
        server = merged_server(recipe.server, self.server, self.label).model_dump(mode="json")
        return json.dumps([server, recipe.env | self.env], sort_keys=True)


# ---------------------------------------------------------------- what to serve
def quantization(recipe: Recipe) -> str | None:
    """The baseline model's weight format: the synthetic spec's, else its config.json's (local or HF cache)."""
    model = recipe.model_for(True)
    if model.synthetic:
        return model.synthetic.quantization
    from speedrun.eval.prompts import find_file

    cfg = find_file(model.path, "config.json")
    try:
        q = (json.loads(cfg.read_text()).get("quantization_config") or {}) if cfg else {}
    except (OSError, ValueError, AttributeError):  # unreadable: no MoE defaults, the report says none ran
        q = {}
    method = q.get("quant_method")
    if method == "fp8" and q.get("weight_block_size"):
        return "fp8_block"
    return {"quark": "quark_mxfp4", "mxfp4": "mxfp4"}.get(method, method)


def is_mla(recipe: Recipe) -> bool:
    model = recipe.model_for(True)
    return (model.synthetic.arch if model.synthetic else "") == "deepseek_v3" or "deepseek" in model.path.lower()


def attention_plan(recipe: Recipe) -> list[Planned]:
    """The candidates (the recipe's list or the card's), then the recipe's own configuration (measured too, unless
    a candidate already serves it), minus exclusions."""
    spec = recipe.baseline
    cands = list(spec.candidates if spec.candidates is not None else ATTENTION.get(recipe.hardware.arch, []))
    if spec.candidates is None and not is_mla(recipe):
        cands = [c for c in cands if c.server.get("attention_backend") not in MLA_ONLY]
    cands += spec.extra_candidates
    plan = [Planned(c.label, "attention", dict(c.server), dict(c.env), list(c.requires)) for c in cands]
    plan.append(Planned("recipe", "recipe", {}))
    return [p for p in plan if p.label not in spec.exclude]


def moe_plan(recipe: Recipe, best: CandidateResult) -> list[Planned]:
    """Each MoE runner backend that applies, on top of the fastest attention candidate."""
    spec = recipe.baseline
    names = spec.moe_runner_backends
    if names is None:
        names = MOE.get((recipe.hardware.arch, quantization(recipe) or ""), [])
    plan = [
        Planned(f"moe-{m}", "moe", best.server | {"moe_runner_backend": m}, dict(best.env), MOE_REQUIRES.get(m, []))
        for m in names
    ]
    return [p for p in plan if p.label not in spec.exclude]


_CHECK = f"""import importlib, json, sys
def check(m):
    if not m.startswith({BUILT!r}):
        importlib.import_module(m)
        return ''
    name = m[len({BUILT!r}):]
    from flashinfer.jit import env
    dirs = (env.FLASHINFER_AOT_DIR, env.FLASHINFER_JIT_DIR)
    if any((d / name / (name + '.so')).exists() for d in dirs):
        return ''
    return ('FlashInfer module ' + name + ' is not built: no flashinfer-jit-cache module, not in the JIT cache '
            + str(env.FLASHINFER_JIT_DIR) + ' (its first-use compile outlasts a server start)')
out = {{}}
for m in sys.argv[1:]:
    try:
        out[m] = check(m)
    except BaseException as e:
        out[m] = (type(e).__name__ + ': ' + str(e)).splitlines()[0][:200]
print(json.dumps(out))
"""


def importable(modules: list[str], python: str) -> dict[str, str]:
    """requirement -> "" when the serving Python has it (a module that imports; `BUILT`: a FlashInfer module built
    already), else why not. One subprocess for all of them; if the check itself cannot run, every requirement reads
    as met (the server start then tells)."""
    if not modules:
        return {}
    script = _CHECK
    try:
        res = subprocess.run([python, "-c", script, *modules], capture_output=True, text=True, timeout=300)
        return json.loads(res.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return dict.fromkeys(modules, "")


# ---------------------------------------------------------------- the probe
def probe_case(recipe: Recipe, s: Settings) -> Case:
    """The recipe's first scenario at one (the middle) concurrency, few prompts: decode-heavy and short."""
    sc, p = recipe.benchmarks.scenarios[0], recipe.baseline.probe
    concs = sorted({c for x in recipe.benchmarks.scenarios for c in x.concurrency})
    conc = s.concurrency or p.concurrency or concs[len(concs) // 2]
    ppc = s.prompts_per_concurrency or p.prompts_per_concurrency
    wpc = p.warmup_per_concurrency if s.warmup_per_concurrency is None else s.warmup_per_concurrency
    isl, osl = s.isl or p.isl or sc.isl, s.osl or p.osl or sc.osl
    return Case(isl, osl, conc, ppc * conc, wpc * conc, range_ratio=sc.range_ratio, ignore_eos=True)


def probe_info(case: Case) -> dict[str, Any]:
    return {"isl": case.isl, "osl": case.osl, "concurrency": case.concurrency, "prompts": case.prompts,
            "warmup": case.warmup, "metric": "output_throughput"}  # fmt: skip


def candidate_recipe(recipe: Recipe, planned: Planned, case: Case, timeout_s: float) -> Recipe:
    """Stock SGLang with the candidate's fields, at the probe's concurrency bucket, measuring the probe only."""
    server = merged_server(recipe.server, planned.server, f"candidate {planned.label!r}")
    base = recipe.model_copy(update={"server": server, "env": recipe.env | planned.env})
    scenario = Scenario(
        isl=case.isl,
        osl=case.osl,
        concurrency=[case.concurrency],
        prompts_per_concurrency=case.prompts // case.concurrency,
        warmup_per_concurrency=case.warmup // case.concurrency,
        range_ratio=case.range_ratio,
    )
    benchmarks = Benchmarks(scenarios=[scenario], timeout_s=timeout_s)
    update = {"overlays": Overlays(), "accuracy": Accuracy(), "benchmarks": benchmarks}
    return base.at_concurrency(case.concurrency).model_copy(update=update)


def serve(recipe: Recipe, planned: Planned, case: Case, s: Settings, pool, spec_for) -> CandidateResult:
    """One candidate through `run_side` (the real launch pipeline and bench client), as a stock side."""
    from speedrun.eval.run import Options, run_side
    from speedrun.eval.serve import default_spec

    probe = recipe.baseline.probe
    sub = candidate_recipe(recipe, planned, case, s.probe_timeout_s or probe.timeout_s)
    opts = Options(
        out=s.out / "candidates",
        accuracy=False,
        gsm8k=False,
        control=False,
        startup_timeout_s=s.startup_timeout_s or probe.startup_timeout_s,
        show_progress=s.show_progress,
    )
    (opts.out / f"{planned.label}.json").unlink(missing_ok=True)  # served again: measured afresh
    data = run_side(sub, Side.BASELINE, opts, pool, spec_for or default_spec, label=planned.label).data
    return result_of(planned, data)


def result_of(planned: Planned, data: dict[str, Any]) -> CandidateResult:
    """The probe's numbers, or why there are none (the first error, with the server log tail)."""
    sc = next(iter(data.get("scenarios") or []), None) or {}
    m = sc.get("metrics") or {}
    startup = data.get("startup_s")
    res = CandidateResult(
        label=planned.label,
        stage=planned.stage,
        server=planned.server,
        env=planned.env,
        status="ok" if sc.get("status") == "ok" else "failed",
        output_throughput=m.get("output_throughput"),
        total_throughput_per_gpu=m.get("total_throughput_per_gpu"),
        median_ttft_ms=m.get("median_ttft_ms"),
        median_tpot_ms=m.get("median_tpot_ms"),
        startup_s=startup if isinstance(startup, int | float) else None,
        log=f"candidates/{planned.label}/server.log",
        launch=data.get("launch", ""),
    )
    if res.status == "ok":
        return res
    err = next(iter(data.get("errors") or []), None)
    if err:
        why, tail = f"{err['what']}: {err['message']}", err.get("log_tail", "")
    else:
        why, tail = f"probe {sc.get('status', 'missing')}: {sc.get('error', '')}".strip(), sc.get("log_tail", "")
    last = next((x.strip() for x in reversed(tail.splitlines()) if x.strip()), "")
    return res.model_copy(update={"error": f"{why} | last log line: {last}" if last else why, "log_tail": tail})


# ---------------------------------------------------------------- the search
@dataclass
class Search:
    recipe: Recipe
    s: Settings
    case: Case
    pool: Any
    spec_for: Any
    previous: dict[str, CandidateResult]
    results: dict[str, CandidateResult] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)  # served configuration -> first label serving it
    notes: list[str] = field(default_factory=list)

    def selected(self, p: Planned) -> bool:
        return self.s.only is None or p.label in self.s.only

    def stage(self, plan: list[Planned]) -> None:
        need = sorted({m for p in plan if self.selected(p) for m in p.requires})
        missing = {m: why for m, why in importable(need, self.s.python).items() if why}
        for i, p in enumerate(plan, 1):
            self.results[p.label] = self.one(p, missing, f"[{i}/{len(plan)}]")
            self.write()  # after every candidate: a crash or a kill later loses nothing

    def one(self, p: Planned, missing: dict[str, str], where: str) -> CandidateResult:
        blank = CandidateResult(label=p.label, stage=p.stage, server=p.server, env=p.env, status="pending")
        key = p.key(self.recipe)
        if key in self.keys:
            return blank.model_copy(update={"status": "same", "error": f"same configuration as {self.keys[key]}"})
        self.keys[key] = p.label
        if not self.selected(p):
            old = self.previous.get(p.label)
            same = old is not None and (old.server, old.env) == (p.server, p.env)
            return old if same else blank.model_copy(update={"error": "not served yet (see --candidates)"})
        why = [f"{m}: {missing[m]}" if m.startswith(BUILT) else f"{m} does not import on this host ({missing[m]})"
               for m in p.requires if m in missing]  # fmt: skip
        if why:
            console.print(f"{where} {p.label}: [yellow]skipped[/]: {escape('; '.join(why))}", highlight=False)
            return blank.model_copy(update={"status": "skipped", "error": "; ".join(why)})
        console.print(f"{where} [bold]{p.label}[/] ({escape(locks.describe(p.server))})", highlight=False)
        res = serve(self.recipe, p, self.case, self.s, self.pool, self.spec_for)
        console.print(f"{where} {one_line(res)}", highlight=False)
        return res

    def best(self, stages: tuple[str, ...] = ("recipe", "attention", "moe")) -> CandidateResult | None:
        ok = [r for r in self.results.values() if r.status == "ok" and r.stage in stages and r.output_throughput]
        return max(ok, key=lambda r: r.output_throughput or 0.0, default=None)

    def report(self) -> dict[str, Any]:
        best = self.best()
        return {
            "format": "speedrun-baseline-search/1",
            "recipe": self.recipe.name,
            "fingerprint": locks.fingerprint(self.recipe, self.case.concurrency),
            "arch": self.recipe.hardware.arch,
            "gpu": detect().name,
            "host": platform.node(),
            "sglang": sglang_version(),
            "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            "probe": probe_info(self.case),
            "best": best.label if best else None,
            "recipe_server": locks.stock_fields(self.recipe),
            "notes": self.notes,
            "candidates": [r.model_dump() for r in self.results.values()],
        }

    def write(self) -> None:
        data = self.report()
        write_json_atomic(self.s.out / SEARCH_JSON, data)
        (self.s.out / SEARCH_MD).write_text(markdown(data))

    def lock(self) -> BaselineLock | None:
        best = self.best()
        if best is None:
            return None
        rep = self.report()
        return BaselineLock(
            recipe=rep["recipe"],
            fingerprint=rep["fingerprint"],
            arch=rep["arch"],
            gpu=rep["gpu"] or None,
            sglang=rep["sglang"],
            created=rep["created"],
            probe=rep["probe"],
            best=best.brief(),
            candidates=[r.brief() for r in self.results.values()],
        )


def sglang_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sglang")
    except PackageNotFoundError:
        return None


def one_line(r: CandidateResult) -> str:
    if r.status != "ok":
        return f"{r.label}: [red]{r.status}[/]: {escape(r.error.splitlines()[0] if r.error else '')}"
    return (
        f"{r.label}: [green]ok[/]  {r.output_throughput:,.0f} output tok/s  TTFT {r.median_ttft_ms or 0:.0f} ms  "
        f"TPOT {r.median_tpot_ms or 0:.1f} ms  (started in {r.startup_s or 0:.0f} s)"
    )


def previous(out: Path, recipe: Recipe, case: Case) -> dict[str, CandidateResult]:
    """Results of an earlier call into the same folder, when it searched the same recipe setting and probe."""
    path = resolve(out / SEARCH_JSON)  # packed where the folder came from docs/results
    if not path.is_file():
        return {}
    try:
        data = read_json(path)
        rows = [CandidateResult.model_validate(c) for c in data.get("candidates", [])]
    except ValueError:
        return {}
    if data.get("fingerprint") != locks.fingerprint(recipe, case.concurrency) or data.get("probe") != probe_info(case):
        console.print(f"[yellow]{path}: another recipe setting or probe; its results are not reused[/]")
        return {}
    return {r.label: r for r in rows if r.status in ("ok", "failed", "skipped")}


def known_labels(recipe: Recipe) -> list[str]:
    moe = recipe.baseline.moe_runner_backends
    if moe is None:
        moe = MOE.get((recipe.hardware.arch, quantization(recipe) or ""), [])
    return [p.label for p in attention_plan(recipe)] + [f"moe-{m}" for m in moe]


def search(recipe: Recipe, s: Settings, spec_for=None) -> tuple[BaselineLock | None, dict[str, Any]]:
    """Both stages; writes the search report (JSON + Markdown) and, when a candidate finished, the lock."""
    from speedrun.eval.run import overlay_pool

    if s.only is not None:
        unknown = sorted(set(s.only) - set(known_labels(recipe)))
        if unknown:
            raise ValueError(f"--candidates: unknown label(s) {unknown}; this recipe's: {known_labels(recipe)}")
    s.out.mkdir(parents=True, exist_ok=True)
    case = probe_case(recipe, s)
    srch = Search(recipe, s, case, overlay_pool(recipe), spec_for, previous(s.out, recipe, case))
    console.rule(f"baseline search: {recipe.name} on {recipe.hardware.arch}")
    console.print(f"probe: {case.name}, {case.prompts} prompts after {case.warmup} warm-up; metric: output tok/s")
    srch.stage(attention_plan(recipe))
    best = srch.best(("recipe", "attention"))
    if not s.moe:
        srch.notes.append("MoE runner stage skipped (--no-moe)")
    elif best is None:
        srch.notes.append("MoE runner stage not run: no attention candidate finished")
    elif not (plan := moe_plan(recipe, best)):
        q = quantization(recipe) or "unknown quantization"
        srch.notes.append(
            f"MoE runner stage: no alternatives for {recipe.hardware.arch} / {q} (baseline.moe_runner_backends)"
        )
    else:
        srch.stage(plan)
    srch.write()
    lock = srch.lock()
    if lock is not None:
        locks.write(s.out / locks.LOCK_NAME, lock)
        if s.lock_beside is not None:
            locks.write(s.lock_beside, lock)
    return lock, srch.report()


# ---------------------------------------------------------------- the report
def summary_table(rep: dict[str, Any]) -> Table:
    """The console's view: one row per candidate, fastest marked."""
    t = Table(title=f"stock SGLang configurations: {rep['recipe']} (probe c{rep['probe']['concurrency']})")
    for col in ("candidate", "status", "output tok/s", "note"):
        t.add_column(col, justify="right" if col == "output tok/s" else "left", overflow="fold")
    for c in rep["candidates"]:
        tput = f"{c['output_throughput']:,.0f}" if c["status"] == "ok" else "—"
        label = f"[bold green]{c['label']}[/]" if c["label"] == rep["best"] else escape(c["label"])
        note = locks.describe(c["server"]) if c["status"] == "ok" else (c["error"] or "").splitlines()[0][:200]
        t.add_row(label, c["status"], tput, escape(note))
    return t


def markdown(rep: dict[str, Any]) -> str:
    from speedrun.eval.report import fmt, table

    p = rep["probe"]
    rows = [CandidateResult.model_validate(c) for c in rep["candidates"]]
    top = max((r.output_throughput or 0 for r in rows if r.status == "ok"), default=0)
    body = [
        [
            r.label + (" (**fastest**)" if r.label == rep["best"] else ""),
            r.stage,
            locks.describe(r.server),
            r.status,
            fmt(r.output_throughput, 0),
            f"{r.output_throughput / top:.2f}x" if r.output_throughput and top and r.status == "ok" else "—",
            fmt(r.median_ttft_ms, 0),
            fmt(r.median_tpot_ms, 1),
            fmt(r.startup_s, 0),
            (r.error.splitlines() or [""])[0][:160],
        ]
        for r in rows
    ]
    head = ["candidate", "stage", "server (on top of the recipe's)", "status", "output tok/s", "vs fastest",
            "median TTFT (ms)", "median TPOT (ms)", "startup (s)", "note"]  # fmt: skip
    own = f"The recipe's own stock configuration (row `recipe`): {locks.describe(rep.get('recipe_server') or {})}."
    verdict = (
        f"**Fastest: {rep['best']}**, locked in `{locks.LOCK_NAME}` (`speedrun run` serves it as the baseline)."
        if rep["best"]
        else "**No candidate finished its probe: no lock written.**"
    )
    lines = [
        f"# Baseline search: {rep['recipe']}",
        "",
        f"Card {rep['arch']} (host {rep['host']}, SGLang {rep.get('sglang')}, {rep['created']}). Probe: ISL "
        f"{p['isl']} / OSL {p['osl']} at concurrency {p['concurrency']}, {p['prompts']} prompts after {p['warmup']} "
        "warm-up requests; ranked by output tok/s. Each candidate's server log: `candidates/<label>/server.log`.",
        own,
        "",
        verdict,
        "",
        *table(head, body),
        "",
        *[f"- {n}" for n in rep.get("notes", [])],
        "",
        "## Failures",
        "",
    ]
    for r in rows:
        if r.status == "failed":
            lines += [f"- **{r.label}**: {(r.error.splitlines() or [''])[0]}", "", "  ```"]
            lines += [f"  {x}" for x in r.log_tail.splitlines()[-30:]] + ["  ```", ""]
    if not any(r.status == "failed" for r in rows):
        lines.append("None.")
    return "\n".join(lines) + "\n"
