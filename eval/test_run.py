"""`speedrun run` end to end on the CPU: two fake SGLang servers (baseline slower, overlay faster) launched as
subprocesses through the real launcher, then throughput, GSM8K, agreement, the report and the PNGs."""

from __future__ import annotations

import json
import sys
import zlib
from dataclasses import replace

import pytest
import yaml
from typer.testing import CliRunner

from speedrun.eval import gsm8k
from speedrun.eval.run import Options, finish, run
from speedrun.eval.scenarios import Scale
from speedrun.launch.command import LaunchSpec, build
from speedrun.recipe import Recipe

DATA = gsm8k.REPO.parent / "shared" / "data" / "gsm8k"
pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not (DATA / "test.jsonl").is_file(), reason=f"no GSM8K copy at {DATA}"),
]
QUESTIONS, WRONG_EVERY = 40, 7


def recipe_dict(tmp_path) -> dict:
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text(json.dumps({"vocab_size": 4096}))
    return {
        "name": "fake-e2e",
        "description": "two fake servers",
        "model": {"path": str(model)},
        "hardware": {"platform": "cuda", "arch": "sm90", "gpus": 2},
        "overlays": {"mla_decode": {"enabled": True}},
        "benchmarks": {
            "scenarios": [
                {
                    "isl": 256,
                    "osl": 32,
                    "concurrency": [2, 4, 8],
                    "prompts_per_concurrency": 2,
                    "warmup_per_concurrency": 1,
                }
            ],
            "timeout_s": 60,
        },
        "accuracy": {
            "gsm8k": {"shots": 3, "questions": QUESTIONS, "min_score": 0.8, "concurrency": 8, "data": str(DATA)},
            "agreement": {"prompts": 4, "prompt_len": 16, "tokens": 8},
        },
    }


def fake_specs(**per_side: list[str]):
    """A spec factory: the real `build()` environment (overlays, report dir), the fake server's argv."""

    def spec_for(recipe, side, port, report_dir, model) -> LaunchSpec:
        env = build(recipe, side=side, port=port, model_path=model, report_dir=report_dir).env
        argv = [
            sys.executable,
            "-m",
            "speedrun.eval.fakeserver",
            "--port",
            str(port),
            "--ttft-ms",
            "2",
            "--gsm8k-dir",
            str(DATA),
            "--wrong-every",
            str(WRONG_EVERY),
            *per_side.get(side, []),
        ]
        seen.append((side, recipe.server.attention_backend))
        return LaunchSpec(argv, env, side)

    seen: list[tuple[str, str | None]] = []
    spec_for.seen = seen  # type: ignore[attr-defined]  # which recipe each side was launched from
    return spec_for


def expected_gsm8k() -> float:
    rows = gsm8k.read_jsonl(DATA / "test.jsonl")[:QUESTIONS]
    return sum(zlib.crc32(r["question"].strip().encode()) % WRONG_EVERY != 0 for r in rows) / QUESTIONS


def test_run_end_to_end(tmp_path):
    recipe = Recipe.model_validate(recipe_dict(tmp_path))
    opts = Options(out=tmp_path / "run", scale=Scale(concurrency=[2, 4]), show_progress=False)
    specs = fake_specs(baseline=["--tpot-ms", "8"], overlay=["--tpot-ms", "2", "--logprob-noise", "0.001"])
    c = run(recipe, opts, specs)
    out = opts.out
    assert c.passed, [g for g in c.gates if not g.passed]
    assert [r.name for r in c.rows] == ["isl256-osl32-c2", "isl256-osl32-c4"]  # c8 scaled away
    assert all(r.speedup and r.speedup > 1.5 for r in c.rows)  # 4x faster decode on the overlay side
    over = json.loads((out / "overlay.json").read_text())
    assert over["accuracy"]["gsm8k"]["score_flexible"] == pytest.approx(expected_gsm8k())
    assert 0 < c.agreement["max_logprob_diff"] <= 0.0021 and c.agreement["match_rate"] == 1.0
    assert over["overlay_reports"][0]["calls"]["mla_decode:fake"] > 0  # the report dir reached the server
    fake = over["overlay_reports"][0]  # the settings the launcher passed, as the server process loaded them
    assert fake["ops_requested"] == fake["settings"]["ops"] == ["mla_decode"]
    assert over["scale_notes"] == ["concurrency: recipe [2, 4, 8] -> [2, 4]"]
    for f in (
        "report.md",
        "throughput_vs_interactivity.png",
        "speedup.png",
        "summary.json",
        "baseline/server.log",
        "overlay/gsm8k.jsonl",
        "overlay/traces/overlay-isl256-osl32-c4.json.gz",
    ):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    assert (out / "speedup.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    assert "**Verdict: PASS**" in md and "| isl256-osl32-c4 |" in md and "scaled down: concurrency" in md
    assert "mla_decode:fake" in md and "Nothing failed." in md


def test_run_with_control_calibrates_agreement(tmp_path):
    """A control side (stock with another backend) that itself diverges at near ties: the overlay diverging
    the same way passes the calibrated gate though it misses the absolute match limit; the same overlay
    choosing a token far outside the baseline's top-k fails it."""
    d = recipe_dict(tmp_path)
    control = {"label": "flashinfer attention", "server": {"attention_backend": "flashinfer"}}
    d["accuracy"] = {"agreement": {"prompts": 8, "prompt_len": 16, "tokens": 8, "min_token_match": 0.99,
                                   "gate": "calibrated", "control": control}}  # fmt: skip
    recipe = Recipe.model_validate(d)
    opts = Options(out=tmp_path / "run", scale=Scale(concurrency=[2]), show_progress=False)
    near = ["--diverge-every", "2", "--diverge-at", "3", "--tie-gap", "0.1"]
    specs = fake_specs(
        baseline=["--tie-gap", "0.1"], control=["--diverge-every", "2", "--diverge-at", "2"], overlay=near
    )
    c = run(recipe, opts, specs)
    assert specs.seen == [("baseline", None), ("control", "flashinfer"), ("overlay", None)]
    assert c.agreement["match_rate"] < 0.99 and not c.agreement["passed"]  # the absolute limit alone would fail
    assert c.agreement["near_tie_divergences"] == len(c.agreement["divergences"]) > 0
    assert c.agreement["divergences"][0]["margin"] == pytest.approx(0.1)  # the baseline's gap, not the overlay's
    ctl = c.control_agreement
    assert ctl["match_rate"] < c.agreement["match_rate"] and ctl["label"] == "flashinfer attention"
    gate = next(g for g in c.gates if g.name.startswith("agreement"))
    assert gate.passed and "calibrated" in gate.name, gate
    assert not (opts.out / "control.json").read_text().count('"scenarios": [{')  # agreement only, no throughput
    md = (opts.out / "report.md").read_text()
    assert "Control — stock vs stock (flashinfer attention)" in md and "**pass**" in md

    base, over, ctl = (json.loads((opts.out / f"{s}.json").read_text()) for s in ("baseline", "overlay", "control"))
    for smp in over["accuracy"]["agreement_samples"]["samples"]:  # step 3: a token far outside the top-k
        smp["ids"][3] += 500
    bad = finish(base, over, tmp_path / "bad", "x", ctl)
    gate = next(g for g in bad.gates if g.name.startswith("agreement"))
    assert not gate.passed and "unexplained_divergences" in gate.detail and "FAIL" in gate.detail


def test_run_split_over_calls_by_side(tmp_path):
    """One side per call (as on a device with a 10-minute call limit): no report until both sides exist, then the
    same verdict as one call; a side served again starts its results afresh."""
    recipe = Recipe.model_validate(recipe_dict(tmp_path))
    specs = fake_specs(baseline=["--tpot-ms", "8"], overlay=["--tpot-ms", "2"])
    opts = Options(out=tmp_path / "run", scale=Scale(concurrency=[2]), show_progress=False, sides=("baseline",))
    assert run(recipe, opts, specs) is None and not (opts.out / "report.md").exists()
    assert run(recipe, replace(opts, sides=("baseline",)), specs) is None  # served again: replaced, not appended
    base = json.loads((opts.out / "baseline.json").read_text())
    assert len(base["scenarios"]) == 1, base["scenarios"]
    c = run(recipe, replace(opts, sides=("overlay",)), specs)
    assert c is not None and c.passed and c.rows[0].speedup > 1.5
    assert [s for s, _ in specs.seen] == ["baseline", "baseline", "overlay"]
    assert "**Verdict: PASS**" in (opts.out / "report.md").read_text()
    with pytest.raises(ValueError, match="unknown side"):
        run(recipe, replace(opts, sides=("stock",)), specs)


def test_run_profiles_decode_steps_per_side_into_the_report(tmp_path):
    """--profile-steps: after each side's cases, the profiler over N decode steps at each concurrency (the fake
    server's real torch profiler over a CPU stand-in); summaries in both results files, a per-op table in the
    report, and no trace left behind (tens of MB a side on a GPU)."""
    recipe = Recipe.model_validate(recipe_dict(tmp_path))
    specs = fake_specs(baseline=["--tpot-ms", "8"], overlay=["--tpot-ms", "2"])
    opts = Options(out=tmp_path / "run", scale=Scale(concurrency=[2]), show_progress=False, accuracy=False,
                   profile_steps=4)  # fmt: skip
    c = run(recipe, opts, specs)
    assert c is not None and not any("profile" in str(e) for e in c.baseline.get("errors", []))
    for side in ("baseline", "overlay"):
        prof = json.loads((opts.out / f"{side}.json").read_text())["decode_profile"]
        assert list(prof) == ["2"] and prof["2"]["steps"] == 4 and prof["2"]["kernel_time_us"] > 0, prof
        assert prof["2"]["isl"] == 256 and "traces" not in prof["2"]
        assert not (opts.out / side / "profile" / "c2").exists()
    md = (opts.out / "report.md").read_text()
    assert "## Decode profile" in md and "| category | stock (us/step) | overlay (us/step) |" in md, md


def test_run_cli_records_failures(tmp_path, monkeypatch):
    """Overlay diverges and dies mid-throughput: the report says so with the log tail, the exit code is 1."""
    import speedrun.eval.run as run_mod
    from speedrun.cli import _register_commands, app

    specs = fake_specs(overlay=["--diverge-every", "1", "--diverge-at", "2", "--die-after", "9"])
    monkeypatch.setattr(run_mod, "default_spec", specs)
    recipe_file = tmp_path / "fake.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe_dict(tmp_path)))
    _register_commands()
    args = [
        "run",
        str(recipe_file),
        "--out",
        str(tmp_path / "run"),
        "--concurrency",
        "2,4",
        "--isl",
        "64",
        "--osl",
        "16",
        "--prompts-per-concurrency",
        "2",
        "--gsm8k-questions",
        "8",
        "--no-progress",
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1, res.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    failed = {g["name"] for g in summary["gates"] if not g["passed"]}
    assert (
        {"agreement", "throughput scenarios"} <= failed and "baseline side" not in failed and "overlay side" in failed
    )
    md = (tmp_path / "run" / "report.md").read_text()
    assert "**Verdict: FAIL**" in md and "server died" in md and "speedrun.eval.fakeserver" in md  # log tail
    assert "isl: recipe 256 -> 64" in md and "gsm8k questions: recipe 40 -> 8" in md
    base = json.loads((tmp_path / "run" / "baseline.json").read_text())
    assert base["accuracy"]["gsm8k"]["questions"] == 8 and all(s["status"] == "ok" for s in base["scenarios"])


def test_bench_eval_compare_cli_against_running_servers(tmp_path):
    """`bench`/`eval` with --server (no launch), then `compare` of the two results files."""
    from speedrun.cli import _register_commands, app
    from speedrun.eval.fakeserver import background

    recipe_file = tmp_path / "fake.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe_dict(tmp_path)))
    _register_commands()
    cli = CliRunner()
    for side, tpot in (("baseline", 6.0), ("overlay", 1.5)):
        with background(tpot_ms=tpot, gsm8k_dir=str(DATA), wrong_every=WRONG_EVERY) as (url, st):
            common = [str(recipe_file), "--server", url, "--side", side, "--out", str(tmp_path / side), "--no-progress"]
            res = cli.invoke(app, ["bench", *common, "--scenario-filter", "c4", "--osl", "16"])
            assert res.exit_code == 0, res.output
            assert st.max_inflight == 4  # only the c4 case ran
            res = cli.invoke(app, ["eval", *common, "--gsm8k-questions", "14"])
            assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "overlay" / "overlay.json").read_text())
    assert [s["name"] for s in data["scenarios"]] == ["isl256-osl16-c4"]
    assert data["accuracy"]["gsm8k"]["questions"] == 14 and "agreement_samples" in data["accuracy"]
    res = cli.invoke(
        app,
        [
            "compare",
            str(tmp_path / "baseline" / "baseline.json"),
            str(tmp_path / "overlay" / "overlay.json"),
            "--out",
            str(tmp_path / "cmp"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "speedup" in res.output and (tmp_path / "cmp" / "report.md").is_file()
    md = (tmp_path / "cmp" / "report.md").read_text()
    assert "### Agreement" in md and "scenario filter: c4" in md and "| isl256-osl16-c4 |" in md
    assert "gsm8k questions: recipe 40 -> 14" in md and "skip" not in md
