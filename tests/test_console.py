"""Output read by programs and greps does not depend on the terminal width (issue 17): the CLI run as CI runs
it (a subprocess, stdout a pipe, COLUMNS=80, a long unfamiliar temp path) prints whole lines and whole names."""

from __future__ import annotations

import io
import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
from rich.table import Table

from speedrun.console import RULE_WIDTH, CliConsole
from speedrun.eval.results import ResultsFile
from speedrun.eval.scenarios import Case
from speedrun.recipe import all_recipes, load_recipe


@pytest.fixture
def deep(tmp_path: Path) -> Path:
    """A temp folder whose path alone is wider than 80 columns."""
    d = tmp_path / "an-unfamiliar-ci-workspace-path" / "with-several-long-parts-like-a-runner-has"
    d.mkdir(parents=True)
    assert len(str(d)) > 80
    return d


def speedrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")} | {"COLUMNS": "80"}
    return subprocess.run(
        [sys.executable, "-m", "speedrun.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_recipes_list_shows_whole_names_at_80_columns(deep):
    res = speedrun("recipes", "list", cwd=deep)
    assert res.returncode == 0, res.stderr
    assert "…" not in res.stdout
    for path in all_recipes():
        r = load_recipe(path)
        assert any(f" {r.name} " in ln and f" {r.model.path} " in ln for ln in res.stdout.splitlines()), r.name


def test_an_error_naming_a_long_path_is_one_line(deep):
    missing = deep / "no-such-recipe.yaml"
    res = speedrun("launch", str(missing), "--dry-run", cwd=deep)
    assert res.returncode == 2
    assert res.stderr.splitlines()[0].startswith(f"error: {missing}: no such recipe file (known recipes: ")
    assert len(res.stderr.splitlines()) == 1, res.stderr


def test_compare_table_keeps_the_scenario_names(deep):
    cases = [Case(isl=8192, osl=1024, concurrency=c, prompts=10 * c, warmup=2 * c) for c in (4, 32, 128)]
    for side, tput in (("baseline", 100.0), ("overlay", 130.0)):
        rf = ResultsFile.create(deep / f"{side}.json", side=side, recipe="fake")
        for c in cases:
            metrics = {"total_throughput_per_gpu": tput * c.concurrency, "interactivity": 50.0}
            rf.add_scenario({"name": c.name, "case": c.to_dict(), "status": "ok", "metrics": metrics})
    res = speedrun("compare", "baseline.json", "overlay.json", "--out", str(deep / "cmp"), cwd=deep)
    assert res.returncode in (0, 1) and "Traceback" not in res.stderr, res.stderr
    lines = res.stdout.splitlines()
    for c in cases:
        assert any(f" {c.name} " in ln and "1.30x" in ln for ln in lines), (c.name, res.stdout)
    assert f"report: {deep / 'cmp' / 'report.md'}" in lines


def test_compile_against_summary_is_one_line(deep):
    """The `--against` summary CI greps (it wrapped at 80 columns in a long temp path, and "0 changed" split)."""
    old = deep / "old.json"
    old.write_text(json.dumps({"rows": []}))
    op = "speedrun.eval.readiness.sample:refactor_specs"
    res = speedrun("kernels", "compile", "--op", op, "--against", str(old), cwd=deep)
    assert res.returncode == 0, res.stdout + res.stderr
    assert any(ln.startswith(f"machine code vs {old}: 0 same, 0 changed, ") for ln in res.stderr.splitlines()), res
    assert any(f"{op}" in ln and "sample/add_helper" in ln for ln in res.stdout.splitlines()), res.stdout


def test_non_terminal_console_neither_wraps_nor_truncates_and_keeps_rules_short():
    out = io.StringIO()
    con = CliConsole(file=out)
    long_line = "word " * 100
    t = Table()
    t.add_column("name")
    t.add_row("x" * 300)
    con.print(long_line.strip())
    con.print(t)
    con.rule("side")
    lines = out.getvalue().splitlines()
    assert lines[0] == long_line.strip()
    assert any("x" * 300 in ln for ln in lines) and "…" not in out.getvalue()
    assert len(lines[-1]) == RULE_WIDTH


def test_terminal_console_uses_the_terminal_width(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    main, sub = pty.openpty()
    with os.fdopen(sub, "w") as tty:
        con = CliConsole(file=tty)
        assert con.width == 80
    os.close(main)
