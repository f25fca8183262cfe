"""`speedrun launch|doctor|patch|recipes|model|report|kernels` (the foundation's commands)."""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from speedrun import patching
from speedrun.console import cli_console
from speedrun.overlays.ops import OPS
from speedrun.recipe import RecipeError, Side, all_recipes, load_recipe

if TYPE_CHECKING:
    from speedrun.overlays.report import Found

console = cli_console()
err = cli_console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def recipe_or_fail(name: str):
    try:
        return load_recipe(name)
    except RecipeError as exc:
        fail(str(exc))


# ---------------------------------------------------------------- launch
def launch(
    recipe: Annotated[str, typer.Argument(help="recipe file or name in recipes/")],
    baseline: Annotated[bool, typer.Option("--baseline", help="stock SGLang: overlays off")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the command and environment only")] = False,
    port: Annotated[int, typer.Option(min=1, max=65535, help="server port")] = 30000,
    host: str = "127.0.0.1",
    timeout: Annotated[float, typer.Option(help="seconds to wait for /health")] = 1200.0,
    out: Annotated[Path, typer.Option(help="folder for the server log and overlay reports")] = Path(".runs/launch"),
    check: Annotated[bool, typer.Option("--check", help="once healthy: one request, show reports, stop")] = False,
    concurrency: Annotated[
        int | None, typer.Option(help="serve the recipe's server_by_concurrency setting for this concurrency")
    ] = None,
    node_rank: Annotated[
        int | None, typer.Option("--node-rank", min=0, help="deployment: this node's share only (0: + router)")
    ] = None,
    hosts: Annotated[
        str | None, typer.Option("--hosts", help="deployment: the nodes' addresses, comma-separated, rank order")
    ] = None,
) -> None:
    """Start SGLang for a recipe (overlays on, or --baseline), wait for health, show the overlay reports. A recipe
    with a `deployment` starts this node's servers and, on node 0, SGLang's router (--port is the router's)."""
    from speedrun.eval.serve import dry_run_text, launch_spec, model_path

    r = recipe_or_fail(recipe)
    side = Side.BASELINE if baseline else Side.OVERLAY
    if r.deployment is not None:
        from speedrun.launch.deploy_cmd import launch_deployment

        if not dry_run and importlib.util.find_spec("sglang") is None:
            fail("sglang is not installed here: pip install -e '.[serve]' (or use the GPU-host bundle, see README)")
        launch_deployment(r, side, dry_run=dry_run, node_rank=node_rank, hosts=hosts, host=host, port=port,
                          timeout=timeout, out=out, check=check,
                          model_path=model_path(r, side, generate=not dry_run))  # fmt: skip
        return
    if node_rank is not None or hosts is not None:
        fail(f"--node-rank/--hosts: {r.name} has no deployment section (one server on this machine)")
    if dry_run:  # plain print: one copy-pasteable line, never wrapped
        print(dry_run_text(r, side, port=port, host=host, out=out, concurrency=concurrency))
        return
    spec, run_dir = launch_spec(r, side, port=port, host=host, out=out, generate=True, concurrency=concurrency)
    if importlib.util.find_spec("sglang") is None:
        fail("sglang is not installed here: pip install -e '.[serve]' (or use the GPU-host bundle, see README)")
    _serve(spec, run_dir, host, port, timeout, check)


def _serve(spec, run_dir: Path, host: str, port: int, timeout: float, check: bool) -> None:
    from speedrun.launch.server import ServerError, one_request, running
    from speedrun.overlays.environ import PluginSettings

    log = run_dir / "server.log"
    console.print(f"[bold]{spec.side}[/]: {spec.shell()}", highlight=False)
    try:
        with running(spec, log, host=host, port=port, timeout_s=timeout) as server:
            console.print(
                f"[green]healthy[/] at {server.url} after {time.monotonic() - server.started:.0f} s; log {log}"
            )
            if check:
                console.print(f"one request: {one_request(server.url)!r}", highlight=False)
                time.sleep(2.5)  # let the schedulers flush their reports
            show_reports(run_dir / "reports", expect_ops=PluginSettings.from_env(spec.env).ops)
            if not check:
                console.print("serving; Ctrl-C stops the server and every child process")
                while server.alive():
                    time.sleep(1)
                fail(f"server exited with code {server.proc.returncode}; log tail:\n{server.log_tail()}")
    except ServerError as exc:
        fail(str(exc), 1)
    # Ctrl-C/SIGTERM: `running` said what it stopped and showed the log tail; the CLI exits 130/143


# ---------------------------------------------------------------- report
def show_reports(directory: Path, expect_ops: Sequence[str] = ()) -> Found:
    """Print the per-process overlay reports in `directory` (or one report file); errors are shown in red, each
    unreadable file is named on stderr. Returns what was read (`overlays.report.Found`)."""
    from speedrun.overlays import report

    found = report.read_reports(directory)
    for f, why in found.unreadable.items():
        err.print(
            f"[bold red]error:[/] {escape(str(f))}: unreadable report: {escape(why)}", soft_wrap=True, highlight=False
        )
    reports = found.reports
    if not reports:
        note = " (overlays were requested!)" if expect_ops else ""
        console.print(f"no overlay reports in {directory}{note}", style="red" if expect_ops else None)
        return found
    t = Table(title=f"overlay reports ({directory})")
    for col in ("role", "tp", "pid", "ops", "hooks applied", "calls", "routes", "warm-up", "fallbacks", "errors"):
        t.add_column(col, overflow="fold")  # on a narrow terminal too: whole names, no …
    for r in reports:
        calls = ", ".join(f"{k}={v}" for k, v in sorted(r.get("calls", {}).items())) or "-"
        fb = sum(sum(v.values()) for v in r.get("fallbacks", {}).values())
        errors = "\n".join(r.get("errors", [])) or "-"
        t.add_row(
            r.get("role", "?"),
            str(r.get("tp_rank", "-")),
            str(r.get("pid")),
            ",".join(r.get("ops_requested", [])) or "-",
            str(len(r.get("applied", []))),
            calls,
            "\n".join(report.routes(r)) or "-",
            "\n".join(report.warmups(r)) or "-",
            str(fb),
            f"[red]{escape(errors)}[/]" if r.get("errors") else "-",
        )
    console.print(t)
    return found


def report_cmd(
    directory: Annotated[Path, typer.Argument(help="SPEEDRUN_REPORT_DIR of a run, or one overlay-*.json report")],
) -> None:
    """Show the per-process overlay reports of a run; exit 1 if there is none, one is unreadable (a process died
    while writing it, or it is not a report) or any process reports an error."""
    if not directory.exists():  # soft_wrap: one line however long the path, for grep and CI logs
        what = "no such file or folder (expected a SPEEDRUN_REPORT_DIR or an overlay-*.json report)"
        err.print(f"[bold red]error:[/] {escape(str(directory))}: {what}", soft_wrap=True, highlight=False)
        raise typer.Exit(2)
    found = show_reports(directory)
    if not found.reports or found.unreadable or any(r.get("errors") for r in found.reports):
        raise typer.Exit(1)


# ---------------------------------------------------------------- doctor
def doctor(
    sglang: Annotated[
        Path | None, typer.Option(help="check the folder holding this sglang/ (e.g. an unpacked wheel) instead")
    ] = None,
) -> None:
    """Versions, GPU and arch; the installed sglang against the support matrix (every hook target and the
    signature it wraps, what a missing one disables) and the state of its patch series. Exit 1 where the
    plugin would refuse to load."""
    from speedrun import support
    from speedrun.sglang_source import sglang_root, source_version

    console.print(support.stack_table())
    console.print(f"GPU: {_gpu()}")
    root = sglang / "sglang" if sglang is not None else sglang_root()
    if root is None or not root.is_dir():
        fail(
            escape(
                f"no sglang source at {root}: pip install -e '.[serve]', or --sglang DIR (the folder holding sglang/)"
            )
        )
    found, findings = source_version(root), support.check(root)
    console.print(support.targets_table(root, findings))
    ok, line = support.verdict(found, findings)
    console.print(f"[{'green' if ok else 'red'}]{line}[/]", highlight=False)
    for f in findings:
        if f.blocking:
            console.print(f"  [red]{f.line()}[/]", highlight=False)
    if not ok:
        console.print("  the plugin refuses to load on it (its per-process report says why) and stock SGLang runs")
    for line in support.patch_states(found, root):
        console.print(line, highlight=False)
    if not ok:
        raise typer.Exit(1)


def _gpu() -> str:
    try:
        import torch

        from speedrun.overlays.arch import current_arch

        if not torch.cuda.is_available():
            return "none (CPU only: kernels run under the Triton interpreter)"
        return f"{torch.cuda.get_device_name(0)} ({current_arch()}), torch {torch.__version__}"
    except ImportError:
        return "torch not installed"


# ---------------------------------------------------------------- patch
def patch_cmd(
    action: Annotated[str, typer.Argument(help="apply | check | revert | status")],
    target: Annotated[Path | None, typer.Option(help="folder holding sglang/ (default: installed)")] = None,
    version: Annotated[
        str | None, typer.Option(help="the series to use where the target has no sglang/_version.py")
    ] = None,
) -> None:
    """Apply, check, revert or show the patch series of the target's SGLang version (all-or-nothing)."""
    if action not in ("apply", "check", "revert", "status"):
        fail(f"unknown action {action!r}: expected apply, check, revert or status")
    try:
        root = target if target is not None else patching.installed_root()
        series = patching.load_series(patching.target_version(root, version))
        if action == "status":
            states = patching.status(series, root)
            for name, state in states.items():
                console.print(f"{name}: {state}", highlight=False)
            if any(s.startswith("conflict") for s in states.values()):
                fail(f"the series conflicts with the files under {root}: resolve before apply or revert", 1)
            return
        changed = patching.apply(series, root, reverse=action == "revert", check=action == "check")
    except patching.PatchError as exc:
        fail(str(exc), 1)
    verb = {"apply": "patched", "revert": "reverted", "check": "would change"}[action]
    console.print(f"{verb} {len(changed)} file(s) under {root}")
    for f in changed:
        console.print(f"  {f}", highlight=False)


# ---------------------------------------------------------------- recipes / model
recipes_app = typer.Typer(help="List, validate and show recipes.", no_args_is_help=True)


@recipes_app.command("list")
def recipes_list() -> None:
    t = Table()
    for col in ("name", "model", "hardware", "overlays"):
        t.add_column(col, overflow="fold")  # on a narrow terminal too: whole names, no …
    for path in all_recipes():
        r = load_recipe(path)
        nodes = f"{r.deployment.nodes} nodes x " if r.deployment and r.deployment.nodes > 1 else ""
        gpus = f"{nodes}{r.hardware.gpus}x {r.hardware.arch}"
        t.add_row(r.name, r.model.path, gpus, ",".join(r.overlays.enabled_ops()))
    console.print(t)


@recipes_app.command("validate")
def recipes_validate(paths: Annotated[list[Path] | None, typer.Argument()] = None) -> None:
    """Validate recipe files (default: all in recipes/); every error names file and field; every file is checked."""
    paths = paths or all_recipes()
    bad = 0
    for path in paths:
        try:
            load_recipe(path)
            console.print(f"[green]ok[/] {path}", highlight=False)
        except RecipeError as exc:
            bad += 1
            err.print(str(exc), style="red", markup=False, highlight=False, soft_wrap=True)
    if bad:
        err.print(f"{bad} of {len(paths)} recipe file(s) failed", style="red", highlight=False)
        raise typer.Exit(1)


@recipes_app.command("show")
def recipes_show(recipe: str) -> None:
    console.print_json(recipe_or_fail(recipe).model_dump_json())


model_app = typer.Typer(help="Synthetic model folders.", no_args_is_help=True)


@model_app.command("synth")
def model_synth(recipe: str, root: Path = Path(".models")) -> None:
    """Generate a recipe's synthetic model folder (config.json + a tokenizer trained here)."""
    from speedrun.synth import ensure_model

    r = recipe_or_fail(recipe)
    # one folder per distinct synthetic model (the baseline may serve its own, e.g. the FP8 form of the slice)
    models = {s: r.model_for(s.stock) for s in (Side.BASELINE, Side.OVERLAY)}
    sides = {m.path: s for s, m in models.items() if m.synthetic is not None}
    if not sides:
        fail(f"{recipe}: model.synthetic is not set; nothing to generate")
    for side in sides.values():
        console.print(f"model folder: {ensure_model(r, root, baseline=side.stock)}", highlight=False)


# ---------------------------------------------------------------- kernels
kernels_app = typer.Typer(help="Kernel microbenchmarks and ahead-of-time compilation.", no_args_is_help=True)


@kernels_app.command("bench", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def kernels_bench(ctx: typer.Context, op: str, out: Path = Path(".runs/kernels")) -> None:
    """Run an op's microbenchmark (ours vs SGLang's kernels, one run): writes OUT/<op>.json and .png."""
    if op not in OPS:
        fail(f"unknown op {op!r}: expected one of {', '.join(OPS)}")
    from speedrun.eval.kernels import BENCH

    bench = importlib.import_module(BENCH[op])
    raise typer.Exit(bench.main(["--out", str(out), *ctx.args]))


@kernels_app.command("compile")
def kernels_compile(
    arch: Annotated[str, typer.Option(help="gfx950 | sm90 | all")] = "all",
    op: Annotated[list[str] | None, typer.Option(help="op(s) or module[:function]; default all ops")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    workers: Annotated[int, typer.Option(help="compile processes")] = 2,
    check_device: Annotated[
        bool, typer.Option("--check-device", help="sm90 on an H100: compare the report with the GPU's own figures")
    ] = False,
    against: Annotated[
        Path | None, typer.Option(help="an earlier --json report: exit 1 if any kernel's machine code changed")
    ] = None,
) -> None:
    """Compile every kernel x config for the target arch on this machine (no GPU needed): matrix instructions,
    registers, shared memory, spills, occupancy. Exit 1 when one fails to compile, spills, or lacks its MMA."""
    from speedrun.eval.readiness import report

    if check_device:
        _check_device(arch, op, as_json, workers)
        return

    archs = report.ARCHS if arch == "all" else (arch,)
    bad = [a for a in archs if a not in report.ARCHS] + [o for o in op or () if o not in OPS and "." not in o]
    if bad:  # a dotted "module[:function]" returning CompileSpecs is accepted too (tests, new ops)
        fail(f"unknown arch/op {bad}: archs {report.ARCHS}, ops {OPS}")
    result = report.run(op or OPS, archs, workers=workers)
    if as_json:
        print(json.dumps(result, indent=1))
    else:
        console.print(report.table(result))
    if result["failed"]:
        raise typer.Exit(1)
    if against is not None:
        _same_code(against, result)


def _same_code(against: Path, result: dict) -> None:
    """Fingerprints vs an earlier report (same ops and archs): a refactor that must not change the GPU code."""
    from speedrun.eval.pack import read_json, resolve
    from speedrun.eval.readiness.fingerprint import compare

    if not resolve(against).is_file():
        fail(f"{against}: no such report (make one with: speedrun kernels compile --json > FILE)")
    diff = compare(read_json(against)["rows"], result["rows"])
    err.print(f"machine code vs {against}: {len(diff['same'])} same, {len(diff['changed'])} changed, "
              f"{len(diff['new'])} new, {len(diff['gone'])} gone")  # fmt: skip
    for k in ("changed", "new", "gone"):
        for name in diff[k]:
            err.print(f"  {k}: {name}", markup=False, highlight=False)
    if diff["changed"] or diff["gone"]:
        raise typer.Exit(1)


def _check_device(arch: str, op: list[str] | None, as_json: bool, workers: int) -> None:
    """Exit 1 when a kernel's registers, spills or shared memory on this GPU differ from the sm90 AOT report."""
    from speedrun.eval.readiness import device_check
    from speedrun.overlays.arch import current_arch

    if arch not in ("sm90", "all"):
        fail(f"--check-device checks sm90 on a CUDA GPU, not --arch {arch}")
    here = current_arch()
    if here != "sm90":
        fail(f"--check-device needs an sm90 GPU (found {here!r})")
    bad = [o for o in op or () if o not in OPS and "." not in o]
    if bad:
        fail(f"unknown op(s) {bad}: expected {', '.join(OPS)}")
    result = device_check.run(list(op or OPS), workers=workers)
    if as_json:
        print(json.dumps(result, indent=1))
    else:
        console.print(device_check.table(result))
    if result["failed"] or not result["rows"]:
        raise typer.Exit(1)


@kernels_app.command("tune")
def kernels_tune(
    op: Annotated[list[str], typer.Option(help="op(s) to sweep and tune")],
    write: Annotated[bool, typer.Option("--write", help="update configs/<arch>.json in place")] = False,
    out: Annotated[Path, typer.Option(help="folder for <op>_sweep.json")] = Path(".runs/tune"),
    sweep_from: Annotated[Path | None, typer.Option("--from", help="use DIR/<op>_sweep.json, no new sweep")] = None,
    min_gain: Annotated[float, typer.Option(help="keep the current config unless the winner is this fast")] = 1.02,
    per_shape: Annotated[
        float | None,
        typer.Option(
            help="also per-shape entries <N>x<K>:<bucket> (mxfp4_gemm) where a variant wins one weight "
            "shape by this much, in buckets that stay"
        ),  # fmt: skip
    ] = None,
) -> None:
    """Sweep each op's candidates on this GPU, pick the fastest variant per config bucket, optionally write it."""
    import sys

    from speedrun.eval.kernels import tune as tuning

    bad = [o for o in op if o not in OPS]
    if bad:
        fail(f"unknown op(s) {bad}: expected {', '.join(OPS)}")
    try:
        arch = tuning.arch_here(stored=sweep_from is not None)
    except tuning.NotTunableHere as exc:
        fail(str(exc))
    for o in op:
        try:
            sweep = tuning.sweep_file(o, out, sweep_from, warn=lambda m: err.print(m, highlight=False))
            t = tuning.select_op(o, sweep, arch, min_gain, per_shape)
        except tuning.TuneError as exc:
            fail(str(exc), 1)
        console.print(tuning.rich_table(o, t.choices))
        if write and t.changed:
            tuning.write(t, command=" ".join(["speedrun", *sys.argv[1:]]))
            console.print(f"wrote {t.path}", highlight=False)
        elif write:
            console.print(f"{o}: current configs kept (no winner beats them by {min_gain}x)")


@kernels_app.command("roofline")
def kernels_roofline(
    results: Annotated[Path, typer.Option(help="folder of measured <op>.json")] = Path("docs/results/kernels/round3"),
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """ESTIMATE: MI355X roofline per op and shape (vendor peak figures) next to the measured card's fraction."""
    from speedrun.eval.readiness import roofline

    try:
        rows = roofline.table(results)
    except FileNotFoundError as exc:  # docs/ is the repo's, not the package's
        fail(f"{exc}: pass --results DIR, a folder of measured <op>.json (the repo's docs/results/kernels/round3)")
    print(json.dumps({"meta": roofline.META, "rows": rows}, indent=1) if as_json else roofline.markdown(rows))


def register(app: typer.Typer) -> None:
    app.command("launch")(launch)
    app.command("doctor")(doctor)
    app.command("patch")(patch_cmd)
    app.command("report")(report_cmd)
    app.add_typer(recipes_app, name="recipes")
    app.add_typer(model_app, name="model")
    app.add_typer(kernels_app, name="kernels")
