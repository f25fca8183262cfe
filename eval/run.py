"""`speedrun run`: baseline launch -> measure -> teardown -> [control: a second stock configuration, agreement
only] -> overlay launch -> measure -> teardown -> report.

Everything lands in one folder: `<side>.json` (results, rewritten after every step), `<side>/server.log`,
`<side>/overlay-reports/`, `<side>/traces/`, `report.md`, the PNGs and `summary.json`. A failure in one step is
recorded (with the server log tail) and the run goes on with what can still be done.
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from speedrun.console import cli_console
from speedrun.eval import agreement, gsm8k
from speedrun.eval.bench import Target, run_cases
from speedrun.eval.client import MeasurementFailed
from speedrun.eval.compare import Comparison, compare
from speedrun.eval.prompts import TokenPool
from speedrun.eval.report import render
from speedrun.eval.results import ResultsFile, write_json_atomic
from speedrun.eval.scenarios import Case, Scale, expand
from speedrun.eval.serve import SpecFactory, default_spec, launched, model_path, pool_for
from speedrun.launch.command import LaunchSpec
from speedrun.mainjob import detect
from speedrun.recipe import Recipe, Server, Side

console = cli_console(stderr=True)
OnMeasured = Callable[[ResultsFile], None]


@dataclass
class Options:
    out: Path
    scale: Scale = field(default_factory=Scale)
    filters: list[str] | None = None
    bench: bool = True
    accuracy: bool = True
    gsm8k: bool = True
    control: bool = True  # run the recipe's agreement control side when it has one
    # sides this invocation serves; the others are read from the run folder (a run split over several calls,
    # e.g. one 10-minute device call per side), and the report is written once baseline and overlay exist
    sides: tuple[Side, ...] = tuple(Side)
    driver: str = "speedrun"
    gsm8k_questions: int | None = None
    startup_timeout_s: float = 1200
    seed: int = 0
    show_progress: bool = True
    cut: list[str] = field(default_factory=list)  # what the user chose to leave out, for the report
    baseline_lock: Path | None = None  # the resolved baseline (`speedrun baseline`); None: the recipe's fixed one
    profile_steps: int = 0  # > 0: after the throughput cases, SGLang's profiler over this many decode steps

    def notes(self, recipe: Recipe) -> list[str]:
        out = self.scale.notes(recipe.benchmarks.scenarios)
        if self.filters:
            out.append(f"scenario filter: {', '.join(self.filters)}")
        if self.gsm8k_questions and recipe.accuracy.gsm8k:
            out.append(f"gsm8k questions: recipe {recipe.accuracy.gsm8k.questions or 'all'} -> {self.gsm8k_questions}")
        return out + self.cut


def results_file(path: Path, recipe: Recipe, side: str, opts: Options, pool: TokenPool, **extra) -> ResultsFile:
    """A side's results file (`side`: its name, a Side or a baseline candidate's label): continued when it exists
    (bench then eval into one folder), else created."""
    if path.exists():
        rf = ResultsFile.load(path)
        notes = rf.data.setdefault("scale_notes", [])
        notes += [n for n in opts.notes(recipe) if n not in notes]
        rf.data.update(extra)
        rf.save()
        return rf
    return ResultsFile.create(
        path,
        side=side,
        recipe=recipe.name,
        description=recipe.description,
        gpus=recipe.total_gpus,
        token_source=pool.source,
        driver=opts.driver,
        scale_notes=opts.notes(recipe),
        **extra,
    )


def step(rf: ResultsFile, what: str, target: Target, fn) -> None:
    """Run one step; an exception is recorded (with the server log tail), not raised; an interrupt is recorded with
    the step it cut short (those before it are complete), and raised."""
    from speedrun.launch.procgroup import signal_name

    try:
        fn()
    except KeyboardInterrupt as exc:
        rf.add_error("interrupted", f"stopped by {signal_name(exc)} during {what} (the steps before it are complete)")
        raise
    except Exception as exc:
        console.print(f"[red]{rf.data.get('side')}: {what} failed: {exc}[/red]", highlight=False)
        tail = target.log_tail() if target.log_tail else ""
        bug = not isinstance(exc, MeasurementFailed)  # a server that could not be measured needs no traceback
        rf.add_error(what, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}" if bug else str(exc), tail)


def measure(
    recipe: Recipe,
    side: str,  # the side's name, for labels (a Side, or a baseline candidate's label)
    target: Target,
    pool: TokenPool,
    rf: ResultsFile,
    side_dir: Path,
    opts: Options,
    cases: list[Case] | None = None,
) -> None:
    """Everything measured on one live server: agreement samples, throughput cases (`cases`, default: the
    recipe's scaled and filtered), GSM8K."""
    acc = recipe.accuracy
    if opts.accuracy:  # what was asked for, so a step that never produced a result reads as a failed gate
        asked = rf.data.get("accuracy_requested", {}) | {"gsm8k": bool(acc.gsm8k), "agreement": bool(acc.agreement)}
        rf.set("accuracy_requested", asked)
    if opts.accuracy and acc.agreement:

        def agree() -> None:
            samples = agreement.collect(target.url, pool, acc.agreement, show_progress=opts.show_progress, label=side)
            rf.set("agreement_samples", samples | {"config": acc.agreement.model_dump()}, section="accuracy")

        step(rf, "agreement", target, agree)
    if opts.bench:
        cases = expand(recipe.benchmarks.scenarios, opts.scale, opts.filters) if cases is None else cases
        step(
            rf,
            "throughput",
            target,
            lambda: run_cases(
                cases,
                target,
                pool,
                rf,
                gpus=recipe.total_gpus,
                seed=opts.seed,
                timeout_s=recipe.benchmarks.timeout_s,
                traces_dir=side_dir / "traces",
                side=side,
                show_progress=opts.show_progress,
                driver=opts.driver,
                tokenizer=pool_tokenizer(pool),
            ),
        )
    if opts.bench and opts.profile_steps > 0:
        step(rf, "profile", target, lambda: profile_cases(cases, target, pool, rf, side_dir, opts.profile_steps))
    if not opts.gsm8k:
        return
    if opts.accuracy and acc.gsm8k and target.alive is not None and not target.alive():
        rf.add_error("gsm8k", "not run: the server died before it", target.log_tail() if target.log_tail else "")
    elif opts.accuracy and acc.gsm8k:

        def gsm() -> None:
            res = gsm8k.run(
                target.url,
                acc.gsm8k,
                side_dir / "gsm8k.jsonl",
                opts.gsm8k_questions,
                show_progress=opts.show_progress,
                label=side,
            )
            rf.set("gsm8k", res, section="accuracy")
            color = "green" if res["passed"] else "red"
            console.print(f"[{color}]{side} GSM8K {res['score_flexible']:.3f} (min {res['min_score']})[/{color}]")

        step(rf, "gsm8k", target, gsm)


def profile_cases(cases: list[Case], target: Target, pool: TokenPool, rf: ResultsFile, side_dir: Path,
                  steps: int) -> None:  # fmt: skip
    """The decode profile (eval/profile.py) at each concurrency the cases ran, with their ISL, into the results
    file's `decode_profile` {concurrency: summary}; the traces are deleted once summarized (tens of MB a side)."""
    import shutil

    from speedrun.eval.profile import profile_server

    done = rf.data.get("decode_profile", {})
    for c, isl in sorted({(case.concurrency, case.isl) for case in cases}):
        trace_dir = side_dir / "profile" / f"c{c}"
        res = profile_server(target.url, pool, trace_dir, concurrency=c, isl=isl, osl=steps + 16, steps=steps)
        res.pop("traces", None)
        done = done | {str(c): res}
        rf.set("decode_profile", done)
        shutil.rmtree(trace_dir, ignore_errors=True)
        console.print(f"{rf.data.get('side')}: decode profile c{c}: {res['kernel_time_us'] / steps:,.0f} us of "
                      f"kernels a step, GPU busy {res['busy_fraction']:.0%}", highlight=False)  # fmt: skip


def pool_tokenizer(pool: TokenPool) -> str | None:
    """The folder/id behind the vocabulary, for `sglang.bench_serving --tokenizer`."""
    for prefix in ("tokenizer.json of ", "vocab_size of "):
        if pool.source.startswith(prefix):
            return pool.source[len(prefix) :].removesuffix("/config.json")
    return None


def run_side(
    recipe: Recipe,
    side: Side,
    opts: Options,
    pool: TokenPool,
    spec_for: SpecFactory,
    on_measured: OnMeasured | None = None,
    label: str | None = None,
) -> ResultsFile:
    """Launch, measure, tear down one side: one server, or one per `server_by_concurrency` setting. `on_measured`
    runs while the last server is still up, once measuring is over: what must not wait for (or be lost in) a slow
    or interrupted teardown, e.g. the report. `label` names the folder and results file instead of the side (a
    baseline candidate of `speedrun baseline`)."""
    from speedrun.overlays.report import read_all

    name = label or str(side)
    side_dir = opts.out / name
    rf = results_file(
        opts.out / f"{name}.json",
        recipe,
        name,
        opts,
        pool,
        overlays_requested=[] if side == Side.BASELINE else recipe.overlays.enabled_ops(),
    )
    console.rule(f"{recipe.name}: {name}")
    cases = expand(recipe.benchmarks.scenarios, opts.scale, opts.filters) if opts.bench else []
    groups = server_groups(recipe, cases)

    def collect() -> None:  # again after each teardown: the schedulers' last flush comes at exit
        rf.set("overlay_reports", [r for g in groups for r in read_all(g.folder(side_dir) / "overlay-reports")])

    for i, group in enumerate(groups):  # accuracy once, on the first server
        group_opts = opts if i == 0 else dataclasses.replace(opts, accuracy=False)
        hook = on_measured if i == len(groups) - 1 else None
        serve_group(group, side, group_opts, pool, spec_for, rf, side_dir, collect, hook)
        collect()
    return rf


@dataclass
class ServerGroup:
    """The cases one server runs: all of them, or one `server_by_concurrency` setting's."""

    label: str  # "" when the side runs one server (its files stay directly in the side's folder)
    recipe: Recipe  # the bucket's fields folded into `server`
    cases: list[Case]

    def folder(self, side_dir: Path) -> Path:
        return side_dir / f"server-{self.label}" if self.label else side_dir


def bucket_label(recipe: Recipe, concurrency: int) -> str:
    """`c1-32`, `c33-up`: the concurrencies one bucket covers."""
    bucket = recipe.bucket_for(concurrency)
    lo = bucket.concurrency_above + 1 if bucket else 1
    hi = min((b.concurrency_above for b in recipe.server_by_concurrency if b.concurrency_above >= lo), default=None)
    return f"c{lo}-{hi}" if hi is not None else f"c{lo}-up"


def server_groups(recipe: Recipe, cases: list[Case]) -> list[ServerGroup]:
    """One server per distinct server setting over the cases, in case order; one group when nothing differs."""
    groups: dict[str, ServerGroup] = {}
    for case in cases:
        sub = recipe.at_concurrency(case.concurrency)
        key = sub.server.model_dump_json()
        groups.setdefault(key, ServerGroup(bucket_label(recipe, case.concurrency), sub, [])).cases.append(case)
    if len(groups) <= 1:
        only = next(iter(groups.values()), None)
        return [ServerGroup("", only.recipe if only else recipe.at_concurrency(None), list(cases))]
    return list(groups.values())


def record_launch(rf: ResultsFile, label: str, spec: LaunchSpec) -> None:
    """`launch`: the command line; with one server per concurrency bucket, each one prefixed by its bucket."""
    if not label:
        rf.set("launch", spec.shell())
        return
    launches = rf.data.get("launches", {}) | {label: spec.shell()}
    rf.set("launches", launches)
    rf.set("launch", "; ".join(f"[{k}] {v}" for k, v in launches.items()))


def serve_group(
    group: ServerGroup,
    side: Side,
    opts: Options,
    pool: TokenPool,
    spec_for: SpecFactory,
    rf: ResultsFile,
    side_dir: Path,
    collect: Callable[[], None],
    on_measured: OnMeasured | None = None,
) -> None:
    """Launch one server, measure its cases, tear it down; a failure is recorded, not raised (an interrupt is
    recorded when it cuts a measurement short, and raised)."""
    from speedrun.launch.procgroup import signal_name
    from speedrun.launch.server import ServerError

    recipe, where = group.recipe, f"server {group.label}" if group.label else "server"
    name = rf.data["side"]  # the side, or the label run_side was given
    if group.label:
        console.print(f"{name}: server for {group.label} ({', '.join(c.name for c in group.cases)})")
    t0, measured = time.monotonic(), False
    try:
        with launched(
            recipe,
            side,
            group.folder(side_dir),
            spec_for=spec_for,
            startup_timeout_s=opts.startup_timeout_s,
            show_progress=opts.show_progress,
            on_spec=lambda spec: record_launch(rf, group.label, spec),
        ) as (target, _):
            took = round(time.monotonic() - t0, 1)
            rf.set("startup_s", rf.data.get("startup_s", {}) | {group.label: took} if group.label else took)
            measure(recipe, name, target, pool, rf, group.folder(side_dir), opts, cases=group.cases)
            time.sleep(2.5 if recipe.overlays.enabled_ops() else 0)  # schedulers flush reports every 2 s
            collect()
            measured = True
            if on_measured is not None:
                on_measured(rf)
    except ServerError as exc:
        rf.add_error(where, str(exc).split("\n", 1)[0], str(exc).split("\n", 1)[-1])
    except KeyboardInterrupt as exc:
        collect()  # the per-process reports the schedulers wrote so far
        interrupted = any(e["what"] == "interrupted" for e in rf.data.get("errors", []))  # by a step, which says so
        if not measured and not interrupted:  # partial results must not read as complete ones
            rf.add_error("interrupted", f"stopped by {signal_name(exc)} while measuring", "")
        raise
    except Exception as exc:  # e.g. synthetic model generation: recorded, the other side still runs
        rf.add_error("launch", f"{type(exc).__name__}: {exc}", traceback.format_exc(limit=5))


def overlay_pool(recipe: Recipe) -> TokenPool:
    """Prompts come from the overlay side's vocabulary, for both sides."""
    try:
        model = model_path(recipe, Side.OVERLAY)
    except Exception as exc:  # e.g. synthetic generation failed: each side's launch records it properly
        console.print(f"[yellow]model folder: {exc}[/yellow]", highlight=False)
        model = None
    return pool_for(recipe, model=model)


def control_recipe(recipe: Recipe) -> Recipe | None:
    """The recipe as the control side runs it: the baseline with the control's server fields and env."""
    ag = recipe.accuracy.agreement
    if ag is None or ag.control is None:
        return None
    server = Server.model_validate(recipe.server.model_dump() | ag.control.server)
    return recipe.model_copy(update={"server": server, "env": recipe.env | ag.control.env})


def run_control(
    recipe: Recipe, opts: Options, pool: TokenPool, spec_for: SpecFactory, on_measured: OnMeasured | None = None
) -> dict | None:
    """The control side: agreement samples only (no throughput, no GSM8K)."""
    ctl = control_recipe(recipe)
    if ctl is None or not opts.control or not opts.accuracy:
        return None
    opts = dataclasses.replace(opts, bench=False, gsm8k=False)
    return run_side(ctl, Side.CONTROL, opts, pool, spec_for, on_measured).data


SIDES = tuple(Side)  # the order they run in: the control after the baseline, the overlay last


def run(recipe: Recipe, opts: Options, spec_for: SpecFactory | None = None) -> Comparison | None:
    """The sides in `opts.sides` (a side served here starts its results afresh), then the report when baseline and
    overlay results are both in the folder; returns the comparison (its `passed` decides the exit code), or None
    while a side is still to be served. The report is first written as soon as the last side is measured, before
    its server is torn down (a teardown that hangs or is interrupted loses nothing), then again after it."""
    bad = [s for s in opts.sides if s not in SIDES]
    if bad:
        raise ValueError(f"unknown side(s) {bad}; expected some of {', '.join(SIDES)}")
    opts.out.mkdir(parents=True, exist_ok=True)
    recipe, stock = resolved_baseline(recipe, opts.baseline_lock)
    pool = overlay_pool(recipe)
    spec_for = spec_for or default_spec
    got: dict[str, dict | None] = {}
    for side in SIDES:  # the sides served elsewhere first, so the early report can use them
        path = opts.out / f"{side}.json"
        if side not in opts.sides:
            got[side] = ResultsFile.load(path).data if path.exists() else None
        else:
            path.unlink(missing_ok=True)
    last = next((s for s in reversed(SIDES) if s in opts.sides), None)

    def report_early(rf: ResultsFile) -> None:
        if rf.data["side"] == Side.BASELINE:
            with_stock(rf, stock)
        have = got | {rf.data["side"]: rf.data}
        if have.get(Side.BASELINE) is not None and have.get(Side.OVERLAY) is not None:
            finish(have[Side.BASELINE], have[Side.OVERLAY], opts.out, recipe.name, have.get(Side.CONTROL))
            console.print(f"report written: {opts.out / 'report.md'} (stopping the {rf.data['side']} server next)")

    serve = {
        Side.BASELINE: lambda hook: with_stock(run_side(recipe, Side.BASELINE, opts, pool, spec_for, hook), stock).data,
        Side.CONTROL: lambda hook: run_control(recipe, opts, pool, spec_for, hook),
        Side.OVERLAY: lambda hook: run_side(recipe, Side.OVERLAY, opts, pool, spec_for, hook).data,
    }
    for side in SIDES:
        if side in opts.sides:
            got[side] = serve[side](report_early if side == last else None)
    missing = [s for s in (Side.BASELINE, Side.OVERLAY) if got[s] is None]
    if missing:
        console.print(f"report waits for: {', '.join(missing)} (run again with --sides, same --out)")
        return None
    return finish(got[Side.BASELINE], got[Side.OVERLAY], opts.out, recipe.name, got[Side.CONTROL])


def resolved_baseline(recipe: Recipe, lock_path: Path | None) -> tuple[Recipe, dict]:
    """The recipe with its locked stock configuration applied (both sides: the baseline serves it, the overlay
    keeps its prefill), and what to record about it; without a lock, the recipe as written. Raises LockError."""
    from speedrun.eval import lock as locks

    gpu = detect().name
    if lock_path is None:
        console.print("baseline: the recipe's fixed stock configuration, not a searched one (no baseline lock)")
        return recipe, locks.config_info(recipe, None, None, gpu)
    lock = locks.load(lock_path, recipe)
    console.print(f"baseline: {lock.best.label} ({locks.describe(lock.best.server)}), locked in {lock_path}")
    resolved = locks.apply(recipe, lock)
    info = locks.config_info(resolved, lock, lock_path, gpu)
    if locks.card_warning(info):  # the report says it too
        console.print(f"baseline: [yellow]the lock was probed on {lock.gpu or 'an unnamed card'}, this is {gpu}[/]: "
                      "its stock candidates were not measured on this card")  # fmt: skip
    return resolved, info


def with_stock(rf: ResultsFile, info: dict) -> ResultsFile:
    rf.set("baseline_config", info)
    return rf


def finish(baseline: dict, overlay: dict, out: Path, title: str = "", control: dict | None = None) -> Comparison:
    """Compare, write report.md, PNGs and summary.json into `out`."""
    c = compare(baseline, overlay, control)
    md = render(c, out, title)
    write_json_atomic(
        out / "summary.json",
        {
            "passed": c.passed,
            "gates": [g.__dict__ for g in c.gates],
            "warnings": c.warnings,
            "agreement": c.agreement,
            "control_agreement": c.control_agreement,
            "report": md.name,
            "speedup": {r.name: r.speedup for r in c.rows},
            "baseline_config": baseline.get("baseline_config"),
        },
    )
    return c
