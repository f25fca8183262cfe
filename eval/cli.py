"""`speedrun bench|eval|compare|run` (owned by the evaluation area)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()
err = Console(stderr=True)

Out = Annotated[Path | None, typer.Option("--out", help="run folder (default .runs/<recipe>-<time>)")]
ServerUrl = Annotated[str | None, typer.Option("--server", help="use this running server instead of launching")]
Side = Annotated[str, typer.Option("--side", help="baseline | overlay | control: what to launch, and the label")]
Filter = Annotated[list[str] | None, typer.Option("--scenario-filter", help="keep matching cases: c32, isl8192-*")]
Conc = Annotated[str | None, typer.Option("--concurrency", help="scale down: e.g. 4,32 (replaces the recipe's)")]
Ppc = Annotated[int | None, typer.Option("--prompts-per-concurrency", help="scale down (finals: 10)")]
Wpc = Annotated[int | None, typer.Option("--warmup-per-concurrency", help="scale down (finals: 2)")]
Isl = Annotated[int | None, typer.Option("--isl", help="scale down the input length (finals: 8192)")]
Osl = Annotated[int | None, typer.Option("--osl", help="scale down the output length (finals: 1024)")]
Driver = Annotated[str, typer.Option("--driver", help="speedrun (our client) | sglang (sglang.bench_serving)")]
Questions = Annotated[int | None, typer.Option("--gsm8k-questions", help="scale down GSM8K (default: recipe's)")]
Startup = Annotated[float, typer.Option("--startup-timeout", help="seconds to wait for server health")]
Quiet = Annotated[bool, typer.Option("--no-progress", help="no progress bars (logs, CI)")]


def _recipe(name: str):
    from speedrun.recipe import RecipeError, load_recipe

    try:
        return load_recipe(name)
    except RecipeError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None


def _options(
    recipe,
    out: Path | None,
    *,
    concurrency: str | None = None,
    driver: str = "speedrun",
    cut: list[str] | None = None,
    **kw,
):
    """Options from the CLI; `kw`: filters, prompts_per_concurrency, warmup_per_concurrency, isl, osl, and
    Options fields (bench, accuracy, gsm8k_questions, startup_timeout_s, show_progress)."""
    from speedrun.eval.run import Options
    from speedrun.eval.scenarios import Scale, parse_ints

    if driver not in ("speedrun", "sglang"):
        err.print(f"[red]--driver must be speedrun or sglang, not {driver!r}[/red]")
        raise typer.Exit(2)
    scale_keys = ("prompts_per_concurrency", "warmup_per_concurrency", "isl", "osl")
    scale = Scale(concurrency=parse_ints(concurrency), **{k: kw.pop(k, None) for k in scale_keys})
    out = out or Path(".runs") / f"{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return Options(out=out, scale=scale, driver=driver, cut=cut or [], **kw)


def _one_side(recipe, opts, side: str, server: str | None) -> dict:
    """Measure one side (existing server or launched); returns its results."""
    from speedrun.eval.bench import Target
    from speedrun.eval.run import control_recipe, measure, overlay_pool, results_file, run_side
    from speedrun.eval.serve import CONTROL, SIDES, default_spec, pool_for

    if side not in (*SIDES, CONTROL):
        err.print(f"[red]--side must be one of {(*SIDES, CONTROL)}[/red]")
        raise typer.Exit(2)
    if side == CONTROL:  # the recipe's agreement control: the baseline with other server fields
        recipe = control_recipe(recipe)
        if recipe is None:
            err.print("[red]--side control: the recipe has no accuracy.agreement.control[/red]")
            raise typer.Exit(2)
    opts.out.mkdir(parents=True, exist_ok=True)
    if server is None:
        pool = overlay_pool(recipe)
        return run_side(recipe, side, opts, pool, default_spec).data
    url = server.rstrip("/")
    pool = pool_for(recipe, url=url)
    rf = results_file(opts.out / f"{side}.json", recipe, side, opts, pool, server_url=url)
    measure(recipe, side, Target(url), pool, rf, opts.out / side, opts)
    return rf.data


def bench(
    recipe: str,
    server: ServerUrl = None,
    side: Side = "overlay",
    out: Out = None,
    scenario_filter: Filter = None,
    concurrency: Conc = None,
    prompts_per_concurrency: Ppc = None,
    warmup_per_concurrency: Wpc = None,
    isl: Isl = None,
    osl: Osl = None,
    driver: Driver = "speedrun",
    startup_timeout: Startup = 1200.0,
    no_progress: Quiet = False,
) -> None:
    """Throughput scenarios on one server (launched from the recipe unless --server): <out>/<side>.json."""
    r = _recipe(recipe)
    opts = _options(
        r,
        out,
        concurrency=concurrency,
        driver=driver,
        filters=scenario_filter,
        prompts_per_concurrency=prompts_per_concurrency,
        warmup_per_concurrency=warmup_per_concurrency,
        isl=isl,
        osl=osl,
        startup_timeout_s=startup_timeout,
        show_progress=not no_progress,
        accuracy=False,
    )
    data = _one_side(r, opts, side, server)
    bad = [s["name"] for s in data["scenarios"] if s.get("status") != "ok"] + [e["what"] for e in data["errors"]]
    console.print(f"results: {opts.out / f'{side}.json'}")
    if bad or not data["scenarios"]:
        err.print(f"[red]not ok: {', '.join(bad) or 'no scenario ran'}[/red]")
        raise typer.Exit(1)


def eval_cmd(
    recipe: str,
    server: ServerUrl = None,
    side: Side = "overlay",
    out: Out = None,
    gsm8k_questions: Questions = None,
    startup_timeout: Startup = 1200.0,
    no_progress: Quiet = False,
) -> None:
    """Accuracy on one server: GSM8K gate, and agreement samples (compared by `speedrun compare`)."""
    r = _recipe(recipe)
    opts = _options(
        r,
        out,
        gsm8k_questions=gsm8k_questions,
        startup_timeout_s=startup_timeout,
        show_progress=not no_progress,
        bench=False,
    )
    data = _one_side(r, opts, side, server)
    g = data.get("accuracy", {}).get("gsm8k")
    console.print(f"results: {opts.out / f'{side}.json'}")
    if data["errors"] or (g is not None and not g["passed"]):
        err.print(f"[red]failed: {[e['what'] for e in data['errors']] or 'GSM8K below threshold'}[/red]")
        raise typer.Exit(1)


def compare_cmd(
    baseline: Annotated[Path, typer.Argument(help="results of stock SGLang (A)")],
    overlay: Annotated[Path, typer.Argument(help="results of the overlay (B)")],
    out: Annotated[Path | None, typer.Option(help="report folder (default: B's folder)")] = None,
    control: Annotated[Path | None, typer.Option(help="results of a second stock configuration (agreement)")] = None,
) -> None:
    """Report B against A: report.md, PNGs, summary.json; exit 1 when a gate fails."""
    from speedrun.eval.results import ResultsFile
    from speedrun.eval.run import finish

    try:
        a, b = ResultsFile.load(baseline).data, ResultsFile.load(overlay).data
        ctl = ResultsFile.load(control).data if control else None
    except (OSError, ValueError) as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    _conclude(finish(a, b, out or overlay.parent, b.get("recipe", ""), ctl), out or overlay.parent)


def run(
    recipe: str,
    out: Out = None,
    skip_accuracy: Annotated[bool, typer.Option("--skip-accuracy")] = False,
    no_control: Annotated[bool, typer.Option("--no-control", help="skip the agreement control side")] = False,
    sides: Annotated[str, typer.Option("--sides", help="serve only these; the others are read from --out")] = (
        "baseline,control,overlay"
    ),
    scenario_filter: Filter = None,
    concurrency: Conc = None,
    prompts_per_concurrency: Ppc = None,
    warmup_per_concurrency: Wpc = None,
    isl: Isl = None,
    osl: Osl = None,
    driver: Driver = "speedrun",
    gsm8k_questions: Questions = None,
    startup_timeout: Startup = 1200.0,
    no_progress: Quiet = False,
    baseline_lock: Annotated[
        Path | None,
        typer.Option("--baseline-lock", help="the resolved baseline (default: --out's, else the recipe's own)"),
    ] = None,
) -> None:
    """Stock SGLang vs overlay, end to end: both launches, throughput, accuracy, report; exit 1 on a failed gate."""
    from speedrun.eval.run import run as run_both

    r = _recipe(recipe)
    opts = _options(
        r,
        out,
        concurrency=concurrency,
        driver=driver,
        filters=scenario_filter,
        prompts_per_concurrency=prompts_per_concurrency,
        warmup_per_concurrency=warmup_per_concurrency,
        isl=isl,
        osl=osl,
        gsm8k_questions=gsm8k_questions,
        startup_timeout_s=startup_timeout,
        show_progress=not no_progress,
        accuracy=not skip_accuracy,
        control=not no_control,
        cut=["accuracy skipped (--skip-accuracy)"] * skip_accuracy + ["agreement control skipped"] * no_control,
        sides=tuple(x.strip() for x in sides.split(",") if x.strip()),
    )
    unknown = set(opts.sides) - {"baseline", "control", "overlay"}
    if unknown or not opts.sides:
        raise typer.BadParameter(f"expected some of baseline,control,overlay; got {sides!r}", param_hint="--sides")
    if out is None and set(opts.sides) != {"baseline", "control", "overlay"}:
        raise typer.BadParameter("a run split over calls needs the same --out in each call", param_hint="--sides")
    opts.baseline_lock = _lock_path(recipe, out, baseline_lock)
    from speedrun.eval.lock import LockError

    try:
        _conclude(run_both(r, opts), opts.out)
    except LockError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None


def _lock_path(recipe: str, out: Path | None, explicit: Path | None) -> Path | None:
    """`--baseline-lock`, else the run folder's lock, else the one beside the recipe file."""
    from speedrun.eval.lock import find
    from speedrun.recipe import resolve_path

    return find(explicit, out, resolve_path(recipe))


def baseline(
    recipe: str,
    out: Out = None,
    candidates: Annotated[
        str | None, typer.Option("--candidates", help="serve only these labels (others: read from --out)")
    ] = None,
    no_moe: Annotated[bool, typer.Option("--no-moe", help="skip the MoE runner stage")] = False,
    isl: Annotated[int | None, typer.Option("--isl", help="probe input length (default: the recipe's)")] = None,
    osl: Annotated[int | None, typer.Option("--osl", help="probe output length (default: the recipe's)")] = None,
    concurrency: Annotated[
        int | None, typer.Option("--concurrency", help="probe concurrency (default: the recipe's middle one)")
    ] = None,
    prompts_per_concurrency: Annotated[int | None, typer.Option("--prompts-per-concurrency")] = None,
    warmup_per_concurrency: Annotated[int | None, typer.Option("--warmup-per-concurrency")] = None,
    startup_timeout: Annotated[float | None, typer.Option("--startup-timeout", help="per candidate, s")] = None,
    probe_timeout: Annotated[float | None, typer.Option("--probe-timeout", help="per candidate's probe, s")] = None,
    save_beside_recipe: Annotated[
        bool, typer.Option("--save-beside-recipe", help="also write the lock as recipes/NAME.baseline-lock.json")
    ] = False,
    no_progress: Quiet = False,
) -> None:
    """Serve every stock configuration this card supports, probe each, lock the fastest as the recipe's baseline."""
    from speedrun.eval import lock as locks
    from speedrun.eval.baseline import Settings, search, summary_table
    from speedrun.recipe import resolve_path

    r = _recipe(recipe)
    out = out or Path(".runs") / f"baseline-{r.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    only = [x.strip() for x in candidates.split(",") if x.strip()] if candidates else None
    s = Settings(
        out=out,
        isl=isl,
        osl=osl,
        concurrency=concurrency,
        prompts_per_concurrency=prompts_per_concurrency,
        warmup_per_concurrency=warmup_per_concurrency,
        startup_timeout_s=startup_timeout,
        probe_timeout_s=probe_timeout,
        only=only,
        moe=not no_moe,
        show_progress=not no_progress,
        lock_beside=locks.beside(resolve_path(recipe)) if save_beside_recipe else None,
    )
    try:
        lock, rep = search(r, s)
    except ValueError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    console.print(summary_table(rep))
    console.print(f"report: {out / 'baseline-search.md'}")
    if lock is None:
        err.print("[red]no candidate finished its probe: no lock written[/red]")
        raise typer.Exit(1)
    console.print(f"lock: {out / locks.LOCK_NAME}  (speedrun run {recipe} --baseline-lock {out / locks.LOCK_NAME})")


def profile(
    recipe: str,
    side: Annotated[str, typer.Option(help="baseline | overlay | both")] = "both",
    server: ServerUrl = None,
    out: Out = None,
    concurrency: Annotated[int, typer.Option(help="requests decoding together")] = 4,
    isl: Annotated[int, typer.Option(help="input length")] = 1024,
    osl: Annotated[int, typer.Option(help="output length (>= steps + 8)")] = 128,
    steps: Annotated[int, typer.Option(help="decode passes to trace")] = 20,
    startup_timeout: Startup = 1200.0,
    no_progress: Quiet = False,
) -> None:
    """Where decode time goes: SGLang's torch profiler over `steps` decode passes, kernels by op, per side."""
    from speedrun.eval.profile import compare_md, profile_server
    from speedrun.eval.results import write_json_atomic
    from speedrun.eval.serve import SIDES, launched, pool_for

    r = _recipe(recipe)
    sides = list(SIDES) if side == "both" else [side]
    if any(s not in SIDES for s in sides) or (server and len(sides) > 1):
        err.print("[red]--side must be baseline, overlay or both (one side with --server)[/red]")
        raise typer.Exit(2)
    out = out or Path(".runs") / f"profile-{r.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    results, kw = {}, dict(concurrency=concurrency, isl=isl, osl=osl, steps=steps)
    for s in sides:
        try:
            if server:
                results[s] = profile_server(server.rstrip("/"), pool_for(r, url=server), out / s / "trace", **kw)
                continue
            pool = pool_for(r, model=_model_or_none(r, s))
            with launched(r, s, out / s, startup_timeout_s=startup_timeout, show_progress=not no_progress) as (t, _):
                results[s] = profile_server(t.url, pool, out / s / "trace", **kw)
        except Exception as exc:  # one side failing still leaves the other's profile
            err.print(f"[red]{s}: profile failed: {type(exc).__name__}: {escape(str(exc))}[/red]")
            results[s] = {"error": f"{type(exc).__name__}: {exc}"}
    write_json_atomic(out / "profile.json", {"recipe": r.name, **kw, "sides": results})
    ok = {k: v for k, v in results.items() if "error" not in v}
    if ok:
        (out / "profile.md").write_text(f"# Decode profile: {r.name}\n\n" + compare_md(ok) + "\n")
        console.print(compare_md(ok), markup=False, highlight=False)
    console.print(f"profile: {out / 'profile.json'}")
    if len(ok) < len(results):
        raise typer.Exit(1)


def _model_or_none(recipe, side: str) -> str | None:
    from speedrun.eval.serve import model_path

    try:
        return model_path(recipe, side)
    except Exception:  # the launch itself reports it properly
        return None


def _conclude(c, out: Path) -> None:
    if c is None:  # a side is still to be served (`--sides`): nothing to judge yet
        return
    t = Table(title="stock SGLang vs overlay")
    for col in ("scenario", "tok/s/GPU stock", "overlay", "speedup", "tok/s/user stock", "overlay"):
        t.add_column(col, justify="left" if col == "scenario" else "right")
    for row in c.rows:
        cells = [row.metric(s, k) for k in ("total_throughput_per_gpu", "interactivity") for s in ("base", "over")]
        txt = [f"{v:,.1f}" if v is not None else "—" for v in cells]
        t.add_row(row.name, txt[0], txt[1], f"{row.speedup:.2f}x" if row.speedup else "—", txt[2], txt[3])
    console.print(t)
    for g in c.gates:
        console.print(
            f"{'[green]pass[/green]' if g.passed else '[red]FAIL[/red]'}  {g.name}: {escape(g.detail)}", highlight=False
        )
    for w in c.warnings:
        console.print(f"[yellow]note[/yellow]  {escape(w)}", highlight=False)
    console.print(f"report: {out / 'report.md'}")
    if not c.passed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add the evaluation commands to the `speedrun` app."""
    app.command("bench")(bench)
    app.command("eval")(eval_cmd)
    app.command("compare")(compare_cmd)
    app.command("run")(run)
    app.command("profile")(profile)
    app.command("baseline")(baseline)
