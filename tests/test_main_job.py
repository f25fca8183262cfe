"""`speedrun run` with no recipe picks the main job for the detected GPUs (or prints its commands with none), and
`--demo` runs the whole pipeline against the fake server, labelled as a pipeline check."""

import json
import os
import shlex
import subprocess
import sys

import pytest

from speedrun.mainjob import FINALS, MAIN_JOBS, Machine, NoMainJob, card, choose
from speedrun.overlays.environ import SETTINGS, PluginSettings
from speedrun.recipe import load_recipe

NO_GPU = os.environ | {"CUDA_VISIBLE_DEVICES": "", "HIP_VISIBLE_DEVICES": "", "COLUMNS": "80"}  # as on CI
H100 = "NVIDIA H100 80GB HBM3"
H200 = "NVIDIA H200"
MI355X = "AMD Instinct MI355X"


@pytest.mark.parametrize(
    ("machine", "recipe", "said"),
    [
        (Machine(8, "rocm", "gfx950", MI355X), FINALS, "sized for the MI355X"),
        (Machine(1, "cuda", "sm90", H100), "synth-deepseek-mxfp4-l30-fp8kv-h100", "sized for the H100"),
        (Machine(1, "cuda", "sm90", H200), "synth-deepseek-mxfp4-l61-h200", "sized for the H200"),
        (Machine(2, "cuda", "sm90", H200), "synth-deepseek-mxfp4-l61-h200", "uses 1 of the 2 GPUs"),
        (
            Machine(1, "cuda", "sm90", "NVIDIA H800"),
            "synth-deepseek-mxfp4-l30-fp8kv-h100",
            "no main job names this card",
        ),
    ],
    ids=["8xMI355X", "H100", "H200", "2xH200", "H800"],
)
def test_hardware_picks_the_main_job(machine, recipe, said):
    r, why = choose(machine)
    assert r.name == recipe
    assert why.startswith(f"no recipe given: this machine has {machine.describe()} -> {recipe}: recipe hardware ")
    assert said in why, why
    assert (r.hardware.platform, r.hardware.arch) == (machine.platform, machine.arch)


@pytest.mark.parametrize(
    "machine",
    [Machine(1, "rocm", "gfx950", MI355X), Machine(1, "cuda", "sm80", "NVIDIA A100"), Machine(4, "rocm", "gfx942")],
    ids=["1xMI355X", "A100", "MI300"],
)
def test_no_main_job_for_other_hardware(machine):
    with pytest.raises(NoMainJob, match=r"no main-job recipe for .*: they need 1x sm90 \(cuda\), 8x gfx950 \(rocm\)"):
        choose(machine)


def test_main_jobs_are_deepseek_mxfp4_with_every_overlay():
    for name in MAIN_JOBS:
        r = load_recipe(name)
        assert r.overlays.enabled_ops() == ["mla_decode", "mxfp4_moe", "mxfp4_gemm"], name
        assert card(name) in ("MI355X", "H100", "H200")


def speedrun(*args: str, cwd) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "speedrun.cli", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=NO_GPU, cwd=cwd)


def settings_in(line: str) -> PluginSettings:
    """The plugin settings a printed launch line passes (its one SPEEDRUN_SETTINGS word)."""
    return PluginSettings.from_env(dict(w.split("=", 1) for w in shlex.split(line) if w.startswith(SETTINGS)))


def strip(line: str) -> tuple[list[str], PluginSettings]:
    """A launch line less its time-stamped report folder (inside the settings)."""
    words = [w for w in shlex.split(line) if not w.startswith(SETTINGS)]
    return words, settings_in(line).model_copy(update={"report_dir": None})


def test_no_recipe_no_gpu_prints_both_launch_commands(tmp_path):
    res = speedrun("run", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith("no GPU here (torch sees no CUDA or ROCm GPU): nothing to serve; the main job")
    for side in ("baseline", "overlay"):
        i = lines.index(f"# {side} side of {FINALS}")
        dry = speedrun("launch", FINALS, "--dry-run", *["--baseline"] * (side == "baseline"), cwd=tmp_path)
        expected = dry.stdout.splitlines()[1]
        assert strip(lines[i + 1]) == strip(expected)  # the same command but for the time-stamped report folder
    overlay = settings_in(lines[lines.index(f"# overlay side of {FINALS}") + 1])
    assert overlay.ops == ("mla_decode", "mxfp4_moe", "mxfp4_gemm") and overlay.report_dir is not None
    assert not (tmp_path / ".runs").exists()  # nothing was run


def test_demo_runs_the_pipeline_labelled_as_a_check(tmp_path):
    res = speedrun("run", "--demo", "--out", "demo", "--no-progress", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    out = tmp_path / "demo"
    md = (out / "report.md").read_text()
    assert md.startswith(f"# PIPELINE CHECK (fake server) of {FINALS}:"), md[:200]
    assert "not a measurement" in md.split("\n")[2] and "**Verdict: PASS**" in md
    assert "speedrun.eval.fakeserver" in md and "sglang.launch_server" not in md  # what really served
    summary = json.loads((out / "summary.json").read_text())
    assert next(iter(summary)) == "pipeline_check" and summary["passed"]
    for side in ("baseline", "overlay"):
        data = json.loads((out / f"{side}.json").read_text())
        assert "not a measurement" in data["pipeline_check"] and data["recipe"].startswith("PIPELINE CHECK")
        assert [s["status"] for s in data["scenarios"]] == ["ok", "ok"]
    assert "PIPELINE CHECK" in res.stdout.splitlines()[1] and "PIPELINE CHECK" in res.stdout.splitlines()[-1]
    assert (out / "speedup.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_choice_on_other_hardware(monkeypatch, capsys):
    """On GPUs no main job fits: a one-line error (exit 2), but --demo still checks the pipeline (finals recipe)."""
    import typer

    import speedrun.mainjob
    from speedrun.eval.cli import _main_job

    monkeypatch.setattr(speedrun.mainjob, "detect", lambda: Machine(1, "cuda", "sm80", "NVIDIA A100-SXM4-80GB"))
    with pytest.raises(typer.Exit) as exc:
        _main_job(demo=False)
    assert exc.value.exit_code == 2 and "no main-job recipe for 1x NVIDIA A100" in capsys.readouterr().err
    assert _main_job(demo=True).name == FINALS
    capsys.readouterr()
    monkeypatch.setattr(speedrun.mainjob, "detect", lambda: Machine(1, "cuda", "sm90", H100))
    assert _main_job(demo=False).name == "synth-deepseek-mxfp4-l30-fp8kv-h100"
    assert capsys.readouterr().out.startswith(f"no recipe given: this machine has 1x {H100} (cuda sm90) -> synth-")
