"""Scenario expansion and scale-downs, prompt vocabulary, agreement maths, atomic results files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from speedrun.eval import agreement
from speedrun.eval.prompts import TokenPool, random_prompts, token_pool, vocab_from_tokenizer_json
from speedrun.eval.results import ResultsFile
from speedrun.eval.scenarios import Case, Scale, expand, parse_ints
from speedrun.recipe import Agreement, Benchmarks, Scenario

GSM8K_RESULT = {"score_flexible": 1.0, "score_strict": 1.0, "invalid": 0.0, "questions": 3, "min_score": 0.5,
                "passed": True}  # fmt: skip


def test_default_is_the_finals_method():
    cases = expand(Benchmarks().scenarios)
    assert [c.name for c in cases] == ["isl8192-osl1024-c4", "isl8192-osl1024-c32", "isl8192-osl1024-c128"]
    c128 = cases[-1]
    assert (c128.prompts, c128.warmup, c128.range_ratio, c128.ignore_eos) == (1280, 256, 1.0, True)
    assert c128.request_rate == float("inf")


def test_scale_down_and_notes():
    scen = Benchmarks().scenarios
    scale = Scale(concurrency=parse_ints("4, 32"), prompts_per_concurrency=2, isl=1024, osl=128)
    cases = expand(scen, scale)
    assert [(c.isl, c.osl, c.concurrency, c.prompts, c.warmup) for c in cases] == [
        (1024, 128, 4, 8, 8),
        (1024, 128, 32, 64, 64),
    ]
    notes = scale.notes(scen)
    assert "concurrency: recipe [4, 32, 128] -> [4, 32]" in notes
    assert "isl: recipe 8192 -> 1024" in notes and len(notes) == 4
    assert Scale(isl=8192).notes(scen) == []  # same as the recipe: nothing to report


def test_filters_and_dedup():
    scen = [Scenario(isl=1024, osl=128, concurrency=[4, 48]), Scenario(isl=2048, osl=128, concurrency=[4])]
    names = lambda f: [c.name for c in expand(scen, filters=f)]
    assert names(["c4"]) == ["isl1024-osl128-c4", "isl2048-osl128-c4"]  # a part, not a substring of c48
    assert names(["isl1024-*"]) == ["isl1024-osl128-c4", "isl1024-osl128-c48"]
    assert names(["nothing"]) == []
    assert len(expand(scen, Scale(isl=1024))) == 2  # the two scenarios collapse into the same cases


def test_tokenizer_vocab_skips_specials(tmp_path):
    tok = {
        "model": {"vocab": {f"t{i}": i for i in range(100)}},
        "added_tokens": [{"id": 100, "special": True}, {"id": 101, "special": False}, {"id": 0, "special": True}],
    }
    (tmp_path / "tokenizer.json").write_text(json.dumps(tok))
    ids = vocab_from_tokenizer_json(tmp_path / "tokenizer.json")
    assert ids[0] == 1 and 100 not in ids and 101 in ids and len(ids) == 100
    pool = token_pool([None, str(tmp_path / "missing"), tmp_path])
    assert pool.source.startswith("tokenizer.json of") and len(pool.ids) == 100


def test_config_and_fallback_pools(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 1000}))
    pool = token_pool([tmp_path])
    assert pool.ids.min() == 10 and pool.ids.max() == 949  # the ends (special tokens) are left out
    assert token_pool([tmp_path / "nope"]).source.startswith("fallback")


def test_prompts_seeded_and_sized():
    pool = TokenPool(np.arange(5, 50), "test")
    a = random_prompts(pool, 6, 32, 8, 1.0, seed=3)
    assert a == random_prompts(pool, 6, 32, 8, 1.0, seed=3) and a != random_prompts(pool, 6, 32, 8, 1.0, seed=4)
    assert all(len(ids) == 32 and n == 8 and min(ids) >= 5 and max(ids) < 50 for ids, n in a)
    lens = [len(ids) for ids, _ in random_prompts(pool, 50, 32, 8, 0.5, seed=1)]
    assert min(lens) >= 16 and max(lens) <= 32 and len(set(lens)) > 1


def test_agreement_prefix_and_logprobs():
    cfg = Agreement(
        prompts=3, prompt_len=4, tokens=4, min_token_match=0.7, max_logprob_diff=0.2, mean_logprob_diff=0.05
    )
    base = {
        "samples": [
            {"ids": [1, 2, 3, 4], "logprobs": [-1.0, -1.0, -1.0, -1.0]},
            {"ids": [5, 6, 7, 8], "logprobs": [-0.5] * 4},
            {"ids": [9, 9, 9, 9], "logprobs": [0.0] * 4},
        ]
    }
    over = {
        "samples": [
            {"ids": [1, 2, 3, 4], "logprobs": [-1.1, -1.0, -1.0, -1.0]},
            {"ids": [5, 6, 0, 8], "logprobs": [-0.5, -0.5, -9.0, -0.5]},  # diverges at 2
            {"ids": [9, 9, 9, 9], "logprobs": [0.0] * 4},
        ]
    }
    r = agreement.compare(base, over, cfg)
    assert r["first_divergence"] == [None, 2, None]
    assert r["match_rate"] == pytest.approx(10 / 12) and r["prompts_fully_matched"] == 2
    assert r["max_logprob_diff"] == pytest.approx(0.1)  # the -9.0 after the divergence is not compared
    assert r["mean_logprob_diff"] == pytest.approx(0.1 / 10)
    assert r["passed"]
    over["samples"][0]["logprobs"][1] = -1.5  # a 0.5 gap on the matched prefix
    assert not agreement.compare(base, over, cfg)["passed"]


def test_results_file_is_rewritten_whole(tmp_path):
    rf = ResultsFile.create(tmp_path / "r.json", side="overlay", recipe="x")
    case = Case(16, 8, 2, prompts=4, warmup=0).to_dict()
    rf.add_scenario({"name": "a", "case": case, "status": "ok", "metrics": {"interactivity": float("inf")}})
    rf.set("gsm8k", GSM8K_RESULT, section="accuracy")
    back = ResultsFile.load(tmp_path / "r.json").data
    assert back["scenarios"][0]["metrics"]["interactivity"] == "inf"  # strict JSON, no Infinity literal
    assert back["accuracy"]["gsm8k"]["score_flexible"] == 1.0
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temp files left behind
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(ValueError, match="not a speedrun results file"):
        ResultsFile.load(tmp_path / "other.json")


def test_sglang_driver_runs_and_parses(tmp_path, monkeypatch):
    """The `--driver sglang` path with a stand-in for `sglang.bench_serving` that writes one result row."""
    import sys

    from speedrun.eval import sglang_driver
    from speedrun.eval.scenarios import Case

    case = Case(128, 16, 4, prompts=8, warmup=8)
    argv = sglang_driver.command(case, "http://h:1", tmp_path / "o.jsonl", "tok/dir", seed=0)
    assert argv[1:3] == ["-m", "sglang.bench_serving"] and "--tokenize-prompt" in argv
    assert argv[argv.index("--max-concurrency") + 1] == "4" and argv[argv.index("--num-prompts") + 1] == "8"
    assert argv[argv.index("--request-rate") + 1] == "inf" and argv[argv.index("--tokenizer") + 1] == "tok/dir"

    row = {
        "duration": 2.0,
        "completed": 7,
        "total_throughput": 100.0,
        "output_throughput": 10.0,
        "median_tpot_ms": 25.0,
        "median_ttft_ms": 40.0,
    }
    script = f"import json,sys; open(sys.argv[1],'a').write(json.dumps({row!r})+'\\n')"
    monkeypatch.setattr(sglang_driver, "command", lambda c, u, out, t, s: [sys.executable, "-c", script, str(out)])
    e = sglang_driver.run_case(
        case, "http://h:1", tmp_path, gpus=2, tokenizer=None, seed=0, timeout_s=30, side="overlay"
    )
    assert e["status"] == "partial" and e["metrics"]["failed"] == 1
    assert e["metrics"]["total_throughput_per_gpu"] == 50.0 and e["metrics"]["interactivity"] == 40.0
    monkeypatch.setattr(sglang_driver, "command", lambda c, u, out, t, s: [sys.executable, "-c", "raise SystemExit(3)"])
    bad = sglang_driver.run_case(case, "u", tmp_path, gpus=1, tokenizer=None, seed=0, timeout_s=30, side="x")
    assert bad["status"] == "failed" and "exit 3" in bad["error"]


def test_divergence_margins_and_calibration():
    """Margins come from the baseline's top-k at the divergence; the calibrated verdict moves with the control."""
    cfg = Agreement(prompts=2, prompt_len=4, tokens=4, tie_margin=0.2, noise_factor=2.0, match_slack=0.1)
    top = [[[7, -1.0], [8, -1.15], [9, -3.0]]] * 4
    base = {"samples": [{"ids": [7, 7, 7, 7], "logprobs": [-1.0] * 4, "top": top}] * 2}
    near = {"ids": [7, 8, 7, 7], "logprobs": [-1.01, -1.1, -1, -1]}
    far = {"ids": [7, 9, 7, 7], "logprobs": [-1.01, -1.1, -1, -1]}
    off = {"ids": [7, 5, 7, 7], "logprobs": [-1.01, -1.1, -1, -1]}  # not in the baseline's top-k
    r = agreement.compare(base, {"samples": [near, far]}, cfg)
    assert [d["margin"] for d in r["divergences"]] == [pytest.approx(0.15), pytest.approx(2.0)]
    assert r["near_tie_divergences"] == 1 and agreement.unexplained(r) == 1
    assert agreement.compare(base, {"samples": [off, off]}, cfg)["divergences"][0]["margin"] is None
    ctl_clean = agreement.compare(base, {"samples": [near, near]}, cfg)  # stock disagrees only at near ties
    ctl_far = agreement.compare(base, {"samples": [far, near]}, cfg)  # stock itself has one far divergence
    assert not agreement.calibrated(r, ctl_clean, cfg)["passed"]  # one far divergence more than the control
    assert agreement.calibrated(r, ctl_far, cfg)["passed"]
    noisy = agreement.compare(base, {"samples": [dict(near, logprobs=[-1.5] + near["logprobs"][1:])] * 2}, cfg)
    crit = agreement.calibrated(noisy, ctl_clean, cfg)["criteria"]["mean_logprob_diff"]
    assert not crit["ok"] and crit["limit"] == pytest.approx(2.0 * 0.01)  # 2 x the control's mean |dlogp|


def test_agreement_control_schema_errors():
    with pytest.raises(ValueError, match="needs a `control`"):
        Agreement(gate="calibrated")
    with pytest.raises(ValueError, match=r"unknown server field\(s\) \['atention_backend'\]"):
        Agreement(control={"label": "x", "server": {"atention_backend": "flashinfer"}})
