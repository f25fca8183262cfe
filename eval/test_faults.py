"""Measurements never lie (issue 17 §3-§4): a server that cannot be measured fails the run (exit 3) instead of
scoring 0, malformed streams are failed requests, re-runs never mix with earlier results, bad compare inputs
are one line, and `eval` shows its progress. All against real local HTTP servers (the fake SGLang server)."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from speedrun.eval import agreement, gsm8k
from speedrun.eval.client import GenRequest, MeasurementFailed, run_requests
from speedrun.eval.compare import compare
from speedrun.eval.fakeserver import background
from speedrun.eval.metrics import summarize
from speedrun.eval.prompts import TokenPool
from speedrun.launch.server import free_port
from speedrun.recipe import Agreement, Gsm8k

pytestmark = pytest.mark.timeout(120)
QUESTIONS = 12


@pytest.fixture
def data(tmp_path):
    """A tiny GSM8K-shaped data set the fake server knows the answers to."""
    folder = tmp_path / "gsm8k"
    folder.mkdir()
    rows = [{"question": f"What is {i} plus {i + 1}?", "answer": f"{i} + {i + 1} = {2 * i + 1}\n#### {2 * i + 1}"}
            for i in range(QUESTIONS)]  # fmt: skip
    for name in ("test.jsonl", "train.jsonl"):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


@pytest.fixture
def recipe_file(tmp_path, data):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"vocab_size": 4096}))
    recipe = {
        "name": "fake-faults",
        "model": {"path": str(model)},
        "hardware": {"platform": "cuda", "arch": "sm90", "gpus": 1},
        "benchmarks": {
            "scenarios": [{"isl": 32, "osl": 8, "concurrency": [2], "prompts_per_concurrency": 2}],
            "timeout_s": 30,
        },
        "accuracy": {
            "gsm8k": {"shots": 2, "questions": QUESTIONS, "min_score": 0.9, "concurrency": 4, "data": str(data)},
            "agreement": {"prompts": 4, "prompt_len": 16, "tokens": 8},
        },
    }
    path = tmp_path / "fake.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def cli(*args: str):
    from speedrun.cli import _register_commands, app

    _register_commands()
    return CliRunner().invoke(app, [str(a) for a in args])


def eval_args(recipe_file, url: str, out, *extra: str) -> list[str]:
    return ["eval", recipe_file, "--server", url, "--side", "overlay", "--out", out, *extra]


# -- §3.1: a server that cannot be measured is a failed run, never a score ----------------------------------


def test_unreachable_server_fails_the_run_not_the_gate(tmp_path, recipe_file):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    res = cli(*eval_args(recipe_file, url, tmp_path / "out", "--no-progress"))
    assert res.exit_code == 3, res.output
    assert f"cannot connect to {url}" in res.output and "below" not in res.output and "0.000" not in res.output
    data = json.loads((tmp_path / "out" / "overlay.json").read_text())
    assert "gsm8k" not in data["accuracy"] and "agreement_samples" not in data["accuracy"]  # no score stands
    assert {e["what"] for e in data["errors"]} == {"gsm8k", "agreement"}
    bench = cli("bench", recipe_file, "--server", url, "--out", tmp_path / "out", "--side", "overlay", "--no-progress")
    assert bench.exit_code == 3 and "Cannot connect" in bench.output, bench.output
    assert "gsm8k" not in bench.output  # bench reports its own failures, not eval's earlier ones


def test_http_error_fails_the_run(tmp_path, recipe_file, data):
    with background(http_status=500, gsm8k_dir=str(data)) as (url, _):
        res = cli(*eval_args(recipe_file, url, tmp_path / "out", "--no-progress"))
    assert res.exit_code == 3, res.output
    assert "HTTP 500" in res.output and url in res.output and "injected fault" in res.output


def test_a_wrong_model_still_fails_the_gate_with_exit_1(tmp_path, recipe_file, data):
    with background(gsm8k_dir=str(data), wrong_every=1) as (url, _):  # every answer off by one
        res = cli(*eval_args(recipe_file, url, tmp_path / "out", "--no-progress"))
    assert res.exit_code == 1, res.output
    assert "gate failed" in res.output and "0.000" in res.output


def test_timeout_and_malformed_answers_raise(data):
    cfg = Gsm8k(shots=1, questions=QUESTIONS, min_score=0.5, concurrency=4, data=str(data))
    ag = Agreement(prompts=4, prompt_len=8, tokens=4)
    pool = TokenPool(np.arange(10, 500), "test")
    with background(ttft_ms=5000, gsm8k_dir=str(data)) as (url, _):
        t0 = time.monotonic()
        with pytest.raises(MeasurementFailed, match=f"GSM8K: no answer from {url} within 0.3 s"):
            gsm8k.run(url, cfg, timeout_s=0.3)
        with pytest.raises(MeasurementFailed, match=f"agreement: no answer from {url} within 0.3 s"):
            agreement.collect(url, pool, ag, timeout_s=0.3)
        assert time.monotonic() - t0 < 4  # the first failure stops the run; no 5 s answers awaited
    with background(garbage_every=3, gsm8k_dir=str(data)) as (url, _):
        with pytest.raises(MeasurementFailed, match=r"GSM8K: malformed answer from .* \(after \d+/12 answers\)"):
            gsm8k.run(url, cfg)
        with pytest.raises(MeasurementFailed, match="agreement: malformed answer"):
            agreement.collect(url, pool, ag)


# -- §3.2: a stream that brought no token is a failed request --------------------------------------------


def test_malformed_stream_is_a_failed_request_and_not_a_ttft():
    reqs = [GenRequest(list(range(i, i + 16)), 8) for i in range(6)]
    with background(garbage_every=2, ttft_ms=30) as (url, _):
        traces, dur = asyncio.run(run_requests(url, reqs, concurrency=1))
    bad = [t for t in traces if not t.success]
    assert len(bad) == 3 and all(t.error.startswith("malformed stream chunk") for t in bad), traces
    m = summarize(traces, dur)
    assert (m["completed"], m["failed"]) == (3, 3)
    assert m["mean_ttft_ms"] >= 25  # the garbage requests' TTFT of 0 is not averaged in


# -- §3.3: re-runs replace or refuse, never append ---------------------------------------------------------


def test_bench_rerun_refuses_then_replaces_with_force(tmp_path, recipe_file, data):
    out = tmp_path / "out"
    args = ["bench", recipe_file, "--side", "overlay", "--out", out, "--no-progress"]
    with background(http_status=503) as (url, _):
        res = cli(*args, "--server", url)
    assert res.exit_code == 3 and "HTTP 503" in res.output, res.output
    with background(gsm8k_dir=str(data)) as (url, _):
        again = cli(*args, "--server", url)
        assert again.exit_code == 2 and "--force" in again.output and "1 scenario(s)" in again.output, again.output
        res = cli(*args, "--server", url, "--force")
        assert res.exit_code == 0, res.output
        res = cli(*eval_args(recipe_file, url, out, "--no-progress"))  # eval adds to bench's file
        assert res.exit_code == 0, res.output
        assert cli(*eval_args(recipe_file, url, out, "--no-progress")).exit_code == 2  # eval again: refused
    saved = json.loads((out / "overlay.json").read_text())
    assert [s["status"] for s in saved["scenarios"]] == ["ok"] and saved["errors"] == []  # no stale failure
    assert saved["accuracy"]["gsm8k"]["score_flexible"] == 1.0


# -- §3.4: compare's inputs and --out are checked, one line each -------------------------------------------


def results(tmp_path, recipe_file, data):
    out = tmp_path / "good"
    with background(gsm8k_dir=str(data)) as (url, _):
        for side in ("baseline", "overlay"):
            res = cli("bench", recipe_file, "--server", url, "--side", side, "--out", out, "--no-progress")
            assert res.exit_code == 0, res.output
    return out / "baseline.json", out / "overlay.json"


def test_compare_rejects_bad_inputs_in_one_line(tmp_path, recipe_file, data):
    base, over = results(tmp_path, recipe_file, data)
    good = json.loads(base.read_text())
    dup = dict(good, scenarios=good["scenarios"] * 2)  # two runs appended into one file
    cases = {
        "list.json": ([good], "expected a speedrun results object"),
        "null.json": (None, "got null"),
        "typed.json": (dict(good, scenarios={"a": 1}), "scenarios: Input should be a valid list (got an object)"),
        "isl.json": (dict(good, scenarios=[dict(good["scenarios"][0], case={"isl": "x"})]), "scenarios.0.case.isl"),
        "dup.json": (dup, "appear more than once"),
    }
    with pytest.raises(ValueError, match="more than once"):  # called directly, too, compare never picks one
        compare(good, dup)
    for name, (content, expected) in cases.items():
        (tmp_path / name).write_text(json.dumps(content))
        res = cli("compare", base, tmp_path / name, "--out", tmp_path / "cmp")
        assert res.exit_code == 2 and "Traceback" not in res.output, (name, res.output)
        line = " ".join(res.output.split())  # one message (the terminal may wrap it)
        assert str(tmp_path / name) in line and expected in line, (name, res.output)
    (tmp_path / "file").write_text("x")
    res = cli("compare", base, over, "--out", tmp_path / "file")
    assert res.exit_code == 2 and "--out" in res.output and "existing file" in res.output, res.output
    assert cli("compare", base, over, "--out", tmp_path / "cmp").exit_code == 0


# -- §4: eval shows progress, --no-progress hides it -------------------------------------------------------


def test_eval_progress_and_no_progress(tmp_path, recipe_file, data):
    with background(gsm8k_dir=str(data)) as (url, _):
        shown = cli(*eval_args(recipe_file, url, tmp_path / "a"))
        quiet = cli(*eval_args(recipe_file, url, tmp_path / "b", "--no-progress"))
    assert shown.exit_code == quiet.exit_code == 0, shown.output + quiet.output
    assert f"GSM8K {QUESTIONS}/{QUESTIONS} right (1.000)" in shown.output  # the final line, with the score
    assert f"{QUESTIONS}/{QUESTIONS}" in shown.output and "agreement samples" in shown.output
    assert "right (" not in quiet.output and f"{QUESTIONS}/{QUESTIONS}" not in quiet.output
    assert "agreement samples" not in quiet.output
