"""`speedrun bench|eval|compare|run` (owned by the evaluation area)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from speedrun.console import cli_console
from speedrun.recipe import Side

console = cli_console()
err = cli_console(stderr=True)

Out = Annotated[Path | None, typer.Option("--out", help="run folder (default .runs/<recipe>-<time>)")]
ServerUrl = Annotated[str | None, typer.Option("--server", help="use this running server instead of launching")]
SideOpt = Annotated[Side, typer.Option("--side", help="what to launch, and the label")]
Filter = Annotated[list[str] | None, typer.Option("--scenario-filter", help="keep matching cases: c32, isl8192-*")]


def _positive_ints(text: str | None) -> str | None:
    """--concurrency is checked as it is parsed: a typo is a usage error naming the flag, not a traceback."""
    from speedrun.eval.scenarios import parse_ints

    try:
        parse_ints(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    return text


# Lower bounds on the scale-downs: 0 would be ignored downstream while the results claim it was used.
Conc = Annotated[
    str | None,
    typer.Option("--concurrency", callback=_positive_ints, help="scale down: e.g. 4,32 (replaces the recipe's)"),
]
Ppc = Annotated[int | None, typer.Option("--prompts-per-concurrency", min=1, help="scale down (finals: 10)")]
Wpc = Annotated[int | None, typer.Option("--warmup-per-concurrency", min=0, help="scale down (finals: 2)")]
Isl = Annotated[int | None, typer.Option("--isl", min=1, help="scale down the input length (finals: 8192)")]
Osl = Annotated[int | None, typer.Option("--osl", min=1, help="scale down the output length (finals: 1024)")]
Driver = Annotated[str, typer.Option("--driver", help="speedrun (our client) | sglang (sglang.bench_serving)")]
Questions = Annotated[int | None, typer.Option("--gsm8k-questions", min=1, help="scale down GSM8K (default: recipe's)")]
Startup = Annotated[float, typer.Option("--startup-timeout", min=1, help="seconds to wait for server health")]
Quiet = Annotated[bool, typer.Option("--no-progress", help="no progress bars (logs, CI)")]
Force = Annotated[bool, typer.Option("--force", help="replace this command's earlier results in --out")]


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


def _fail(code: int, message: str) -> None:
    err.print(f"[red]{escape(message)}[/red]", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _fresh(path: Path, command: str, force: bool) -> None:
    """A re-run never appends to its earlier results (they would read as current): refuse, or with --force
    replace them; the other command's results in the same file (bench then eval) are kept."""
    from speedrun.eval.results import ResultsError, ResultsFile

    if not path.exists():
        return
    try:
        rf = ResultsFile.load(path)
    except ResultsError as exc:
        _fail(2, f"--out: {exc}; choose another --out")
    held = rf.holds(command)
    if held and not force:
        _fail(
            2,
            f"--out: {path} already holds {', '.join(held)} of an earlier `speedrun {command}`: pass --force to "
            "replace them, or choose another --out",
        )
    if held:
        rf.clear(command)


def _one_side(recipe, opts, side: Side, server: str | None, force: bool = False) -> dict:
    """Measure one side (existing server or launched); returns its results."""
    from speedrun.eval.bench import Target
    from speedrun.eval.run import control_recipe, measure, overlay_pool, results_file, run_side
    from speedrun.eval.serve import default_spec, pool_for

    side = Side(side)
    if side == Side.CONTROL:  # the recipe's agreement control: the baseline with other server fields
        recipe = control_recipe(recipe)
        if recipe is None:
            err.print("[red]--side control: the recipe has no accuracy.agreement.control[/red]")
            raise typer.Exit(2)
    _fresh(opts.out / f"{side}.json", "bench" if opts.bench else "eval", force)
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
    side: SideOpt = Side.OVERLAY,
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
    force: Force = False,
) -> None:
    """Throughput scenarios on one server (launched from the recipe unless --server): <out>/<side>.json.

    Exit codes:
    0 every scenario ran ok;
    2 bad recipe, flag or --out (e.g. earlier bench results there, without --force);
    3 the run failed: server unreachable, HTTP errors, malformed answers, timeouts, death or a failed launch.
    """
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
    from speedrun.eval.compare import first_line

    data = _one_side(r, opts, side, server, force)
    console.print(f"results: {opts.out / f'{side}.json'}")
    bad = [f"{s['name']} {s['status']}: {first_line(s.get('error'))}" for s in data["scenarios"] if s["status"] != "ok"]
    _run_failed(data, "bench", side, server, opts.out, bad)
    if not data["scenarios"]:
        _fail(2, "no scenario to run: check --scenario-filter against the recipe's scenarios")


def eval_cmd(
    recipe: str,
    server: ServerUrl = None,
    side: SideOpt = Side.OVERLAY,
    out: Out = None,
    gsm8k_questions: Questions = None,
    startup_timeout: Startup = 1200.0,
    no_progress: Quiet = False,
    force: Force = False,
) -> None:
    """Accuracy on one server: GSM8K gate, and agreement samples (compared by `speedrun compare`).

    Exit codes:
    0 measured, GSM8K passed (or not asked for);
    1 GSM8K below the recipe's min_score: the gate failed;
    2 bad recipe, flag or --out (e.g. earlier eval results there, without --force);
    3 the run failed, no score: server unreachable, HTTP error, malformed answer, timeout, death or failed launch.
    """
    r = _recipe(recipe)
    opts = _options(
        r,
        out,
        gsm8k_questions=gsm8k_questions,
        startup_timeout_s=startup_timeout,
        show_progress=not no_progress,
        bench=False,
    )
    data = _one_side(r, opts, side, server, force)
    g = data.get("accuracy", {}).get("gsm8k")
    console.print(f"results: {opts.out / f'{side}.json'}")
    _run_failed(data, "eval", side, server, opts.out, [])
    if g is not None and not g["passed"]:
        _fail(1, f"gate failed: {side} GSM8K {g['score_flexible']:.3f} is below the recipe's min {g['min_score']}")


def _run_failed(data: dict, command: str, side: str, server: str | None, out: Path, bad: list[str]) -> None:
    """Exit 3, one line per failure of this command, naming the server, when anything could not be measured."""
    from speedrun.eval.compare import first_line
    from speedrun.eval.results import errors_of

    bad = bad + [f"{e['what']}: {first_line(e.get('message'))}" for e in errors_of(data, command)]
    where = f"server {server}" if server else f"launched server (log: {out / side / 'server.log'})"
    for line in bad:
        line = line if server and server in line else f"{where}: {line}"
        err.print(f"[red]run failed: {side} {escape(line)}[/red]", highlight=False, soft_wrap=True)
    if bad:
        raise typer.Exit(3)


def compare_cmd(
    baseline: Annotated[Path, typer.Argument(help="results of stock SGLang (A)")],
    overlay: Annotated[Path, typer.Argument(help="results of the overlay (B)")],
    out: Annotated[Path | None, typer.Option(help="report folder (default: B's folder)")] = None,
    control: Annotated[Path | None, typer.Option(help="results of a second stock configuration (agreement)")] = None,
) -> None:
    """Report B against A: report.md, PNGs, summary.json.

    Exit codes:
    0 every gate passed;
    1 a gate failed;
    2 a results file or --out is unusable (one line names it).
    """
    from speedrun.eval.results import ResultsError, ResultsFile
    from speedrun.eval.run import finish

    folder = out or overlay.parent
    if folder.exists() and not folder.is_dir():
        _fail(2, f"--out {folder}: expected a folder for the report, got an existing file")
    try:
        a, b = ResultsFile.load(baseline).data, ResultsFile.load(overlay).data
        ctl = ResultsFile.load(control).data if control else None
    except ResultsError as exc:
        _fail(2, str(exc))
    try:
        c = finish(a, b, folder, b.get("recipe", ""), ctl)
    except OSError as exc:
        _fail(2, f"--out {folder}: cannot write the report: {exc.strerror or exc}")
    _conclude(c, folder)


def run(
    recipe: Annotated[
        str | None, typer.Argument(help="recipe file or name (default: the main job for this machine's GPUs)")
    ] = None,
    out: Out = None,
    demo: Annotated[
        bool, typer.Option("--demo", help="check the pipeline against speedrun's fake server: no SGLang, no GPU")
    ] = False,
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
    ops: Annotated[
        str | None,
        typer.Option(
            "--ops",
            help="overlay side: only these of the recipe's overlays, e.g. mxfp4_moe,mxfp4_gemm "
            "(an ablation; without mla_decode it attends as the baseline does)",
        ),
    ] = None,
    profile_steps: Annotated[
        int,
        typer.Option(
            "--profile-steps",
            min=0,
            help="after each side's throughput cases: SGLang's profiler over this many decode steps at each "
            "concurrency (kernels per step by op, in the report); 0: none",
        ),
    ] = 0,
) -> None:
    """Stock SGLang vs overlay, end to end: both launches, throughput, accuracy, report; exit 1 on a failed gate.

    No RECIPE: the main job for the GPUs here (one line says which and why); no GPU: its launch commands, exit 0.

    --demo: the same pipeline against speedrun's fake server, on any machine: a check, not a measurement."""
    from speedrun.eval import demo as pipeline
    from speedrun.eval.run import run as run_both

    r = _recipe(recipe) if recipe else _main_job(demo)
    if r is None:  # no GPU: the commands are printed, nothing to serve
        return
    ablation = []
    if ops is not None:
        r, ablation = _only_ops(r, ops)
    if demo:
        out = out or Path(".runs") / f"pipeline-check-{r.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        console.print(f"[bold yellow]{pipeline.LABEL}[/]: {r.name} with the fake server on both sides", soft_wrap=True)
        r = pipeline.demo_recipe(r, out)
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
        cut=["accuracy skipped (--skip-accuracy)"] * skip_accuracy
        + ["agreement control skipped"] * no_control
        + pipeline.NOTES * demo
        + ablation,
        sides=tuple(x.strip() for x in sides.split(",") if x.strip()),
        profile_steps=profile_steps,
    )
    unknown = set(opts.sides) - set(Side)
    if unknown or not opts.sides:
        raise typer.BadParameter(f"expected some of {','.join(Side)}; got {sides!r}", param_hint="--sides")
    opts.sides = tuple(Side(s) for s in opts.sides)
    if out is None and set(opts.sides) != set(Side):
        raise typer.BadParameter("a run split over calls needs the same --out in each call", param_hint="--sides")
    if demo:
        _pipeline_check(r, opts)
        return
    from speedrun.eval.lock import LockError

    opts.baseline_lock = _lock_path(recipe or r.name, out, baseline_lock)
    try:
        _conclude(run_both(r, opts), opts.out)
    except LockError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None


def _only_ops(r, ops: str):
    """The recipe with only the --ops overlays on, and the line the report gives the ablation."""
    want = [x.strip() for x in ops.split(",") if x.strip()]
    try:
        narrowed = r.with_ops(want)
    except ValueError as exc:
        _fail(2, f"--ops: {exc} in {r.name}")
    off = [op for op in r.overlays.enabled_ops() if op not in want]
    return narrowed, [f"overlay side with {', '.join(want)} only (--ops): {', '.join(off) or 'nothing'} off"]


def _pipeline_check(r, opts) -> None:
    """`run --demo`: the sides on the fake server, every output labelled, whatever the verdict."""
    from speedrun.eval import demo as pipeline
    from speedrun.eval.run import run as run_both

    c = run_both(r, opts, pipeline.fake_spec)
    pipeline.label_outputs(opts.out)
    try:
        _conclude(c, opts.out, title=pipeline.LABEL)
    finally:
        console.print(f"[bold yellow]{pipeline.LABEL}[/]: no number above is SGLang's", soft_wrap=True)


def _main_job(demo: bool):
    """The main-job recipe for the GPUs here (one line says which and why); with no GPU, print its two launch
    commands and return None (or, with --demo, return it: the pipeline check needs no GPU)."""
    from speedrun.eval.serve import dry_run_text
    from speedrun.mainjob import FINALS, NoMainJob, choose, detect, hardware

    machine = detect()
    if not machine.gpus:
        r = _recipe(FINALS)
        if demo:
            console.print(
                f"no recipe given, no GPU here ({machine.why_none}): the main job is {r.name}", soft_wrap=True
            )
            return r
        console.print(
            f"no GPU here ({machine.why_none}): nothing to serve; the main job {r.name} needs {hardware(r)}. "
            "Its launch commands, as `speedrun launch --dry-run` prints them:",
            soft_wrap=True,
            highlight=False,
            markup=False,
        )
        print(dry_run_text(r, Side.BASELINE))
        print(dry_run_text(r, Side.OVERLAY))
        console.print("Check the pipeline here (fake server, no GPU): speedrun run --demo", markup=False)
        return None
    try:
        r, why = choose(machine)
    except NoMainJob as exc:
        if demo:  # the pipeline check serves nothing on these GPUs: any recipe will do
            console.print(f"{exc}; checking the pipeline of {FINALS}", soft_wrap=True, highlight=False, markup=False)
            return _recipe(FINALS)
        err.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True, highlight=False)
        raise typer.Exit(2) from None
    console.print(why, soft_wrap=True, highlight=False, markup=False)
    return r


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
    concurrency: Annotated[int, typer.Option(min=1, help="requests decoding together")] = 4,
    isl: Annotated[int, typer.Option(min=1, help="input length")] = 1024,
    osl: Annotated[int, typer.Option(min=1, help="output length (>= steps + 8)")] = 128,
    steps: Annotated[int, typer.Option(min=1, help="decode passes to trace")] = 20,
    startup_timeout: Startup = 1200.0,
    no_progress: Quiet = False,
) -> None:
    """Where decode time goes: SGLang's torch profiler over `steps` decode passes, kernels by op, per side."""
    from speedrun.eval.profile import compare_md, profile_sides

    r = _recipe(recipe)
    both = [Side.BASELINE, Side.OVERLAY]
    sides = both if side == "both" else [side]
    if any(s not in both for s in sides) or (server and len(sides) > 1):
        err.print("[red]--side must be baseline, overlay or both (one side with --server)[/red]")
        raise typer.Exit(2)
    sides = [Side(s) for s in sides]
    out = out or Path(".runs") / f"profile-{r.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    kw = dict(concurrency=concurrency, isl=isl, osl=osl, steps=steps)

    def failed(s: Side, exc: Exception) -> None:
        err.print(f"[red]{s}: profile failed: {type(exc).__name__}: {escape(str(exc))}[/red]")

    results = profile_sides(r, sides, out, server=server, startup_timeout_s=startup_timeout,
                            show_progress=not no_progress, on_error=failed, **kw)  # fmt: skip
    ok = {k: v for k, v in results.items() if "error" not in v}
    if ok:
        console.print(compare_md(ok), markup=False, highlight=False)
    console.print(f"profile: {out / 'profile.json'}")
    if len(ok) < len(results):
        raise typer.Exit(1)


def _conclude(c, out: Path, title: str = "stock SGLang vs overlay") -> None:
    if c is None:  # a side is still to be served (`--sides`): nothing to judge yet
        return
    from speedrun.eval.compare import PAIRED

    t = Table(title=title)
    for col in ("scenario", "tok/s/GPU stock", "overlay", "speedup", "tok/s/user stock", "overlay"):
        t.add_column(col, justify="left" if col == "scenario" else "right", overflow="fold")  # no … in names
    for row in c.rows:
        cells = [row.metric(s, k) for k in ("total_throughput_per_gpu", "interactivity") for s in PAIRED]
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
