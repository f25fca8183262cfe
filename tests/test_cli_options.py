"""CLI flags: a bad value is a usage error naming the flag (exit 2, no traceback), and a given value is used."""

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from speedrun.cli import _register_commands, app
from speedrun.eval.scenarios import Scale, expand, parse_ints
from speedrun.recipe import Scenario

_register_commands()
DEAD = "http://127.0.0.1:9"  # nothing listens: a flag that slipped through would fail later, with exit 1


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


@pytest.mark.parametrize(
    "args",
    [
        ("bench", "synth-deepseek-h100", "--server", DEAD, "--isl", "0"),
        ("bench", "synth-deepseek-h100", "--server", DEAD, "--osl", "-1"),
        ("bench", "synth-deepseek-h100", "--server", DEAD, "--prompts-per-concurrency", "0"),
        ("bench", "synth-deepseek-h100", "--server", DEAD, "--warmup-per-concurrency", "-1"),
        ("bench", "synth-deepseek-h100", "--server", DEAD, "--concurrency", "abc"),
        ("bench", "synth-deepseek-h100", "--server", DEAD, "--concurrency", "4,0"),
        ("run", "synth-deepseek-h100", "--isl", "0"),
        ("run", "synth-deepseek-h100", "--concurrency", "4,x"),
        ("eval", "synth-deepseek-h100", "--server", DEAD, "--gsm8k-questions", "0"),
        ("profile", "synth-deepseek-h100", "--server", DEAD, "--steps", "0"),
        ("launch", "synth-deepseek-h100", "--dry-run", "--port", "99999"),
        ("launch", "synth-deepseek-h100", "--dry-run", "--port", "0"),
    ],
    ids=lambda a: " ".join(a[2:]).replace(DEAD, "URL"),
)
def test_bad_flag_is_a_usage_error(args):
    res = invoke(*args)
    flag = next(a for a in args if a.startswith("--") and a not in ("--server", "--dry-run"))
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit), (res.output, res.exception)
    assert f"Invalid value for '{flag}'" in res.output, res.output


def test_no_traceback_in_a_real_process():
    argv = [sys.executable, "-m", "speedrun.cli", "bench", "synth-deepseek-h100", "--concurrency", "abc"]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert "'abc' is not a positive integer" in res.stderr


def test_parse_ints():
    assert parse_ints("4, 32,128") == [4, 32, 128] and parse_ints(None) is None and parse_ints("") is None
    for bad in ("abc", "4,-1", "0", "4.5", ",,"):
        with pytest.raises(ValueError, match="positive integer"):
            parse_ints(bad)


def test_scale_values_are_used_or_rejected():
    sc = [Scenario(isl=8192, osl=1024, concurrency=[4], prompts_per_concurrency=10, warmup_per_concurrency=2)]
    (case,) = expand(sc, Scale(isl=64, osl=8, prompts_per_concurrency=3, warmup_per_concurrency=0))
    assert (case.isl, case.osl, case.prompts, case.warmup) == (64, 8, 12, 0)
    for bad in (dict(isl=0), dict(osl=-1), dict(prompts_per_concurrency=0), dict(warmup_per_concurrency=-1),
                dict(concurrency=[4, 0]), dict(concurrency=[])):  # fmt: skip
        with pytest.raises(ValueError, match=next(iter(bad))):
            Scale(**bad)
