"""`speedrun baseline` and the resolved baseline in `speedrun run`, on the CPU: the real launch commands (`build()`)
served by the fake server, whose speed depends on the SGLang flags it was started with and which refuses to start
with one of them; plus per-concurrency server settings."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from speedrun.eval import baseline as bl
from speedrun.eval import lock as locks
from speedrun.eval.fakeserver import flag_keys
from speedrun.eval.run import Options, run
from speedrun.eval.scenarios import Scale
from speedrun.launch.command import LaunchSpec, build
from speedrun.recipe import Recipe, RecipeError, Side, load_recipe

pytestmark = pytest.mark.timeout(180)
DELAYS = {  # extra TPOT (ms) per flag: flashmla at page 64 is stock's fastest here, cutlass MoE slows it down
    "--attention-backend=triton": 20,
    "--attention-backend=flashinfer": 10,
    "--moe-runner-backend=cutlass": 10,
    "--chunked-prefill-size=1024": 30,
}
FAIL = ["--attention-backend=fa3"]


def recipe_dict(tmp_path: Path, **extra) -> dict:
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text(json.dumps({"vocab_size": 4096}))
    cands = [
        {"label": "triton", "server": {"attention_backend": "triton"}},  # the recipe's own too: served once
        {"label": "flashinfer", "server": {"attention_backend": "flashinfer"}},
        {"label": "flashmla-p64", "server": {"attention_backend": "flashmla", "page_size": 64}},
        {"label": "fa3", "server": {"attention_backend": "fa3"}},  # fails to start
        {"label": "nokernel", "server": {"attention_backend": "cutlass_mla"}, "requires": ["no_such_module_xyz"]},
    ]
    return {
        "name": "fake-baseline",
        "model": {"path": str(model)},
        "hardware": {"platform": "cuda", "arch": "sm90", "gpus": 1},
        "server": {"attention_backend": "triton", "disable_radix_cache": True},
        "overlays": {"mla_decode": {"enabled": True}, "server": {"attention_backend": "speedrun_mla"}},
        "benchmarks": {
            "scenarios": [{"isl": 64, "osl": 16, "concurrency": [2, 4, 8], "prompts_per_concurrency": 2}],
            "timeout_s": 60,
        },
        "baseline": {
            "candidates": cands,
            "moe_runner_backends": ["cutlass"],
            "probe": {"timeout_s": 60, "startup_timeout_s": 60},
        },
        **extra,
    }


def fake_sglang(seen: list | None = None):
    """The real launch (argv and env from `build()`), served by the fake server instead of sglang.launch_server."""

    def spec_for(recipe, side, port, report_dir, model) -> LaunchSpec:
        spec = build(recipe, side=side, port=port, model_path=model, report_dir=report_dir)
        flags = spec.argv[spec.argv.index("sglang.launch_server") + 1 :]
        argv = [sys.executable, "-m", "speedrun.eval.fakeserver", "--ttft-ms", "2", "--tpot-ms", "1", *flags]
        env = spec.env | {
            "SPEEDRUN_FAKE_FLAG_TPOT_MS": json.dumps(DELAYS),
            "SPEEDRUN_FAKE_FAIL_FLAGS": json.dumps(FAIL),
        }
        if seen is not None:
            seen.append((side, " ".join(flags)))
        return LaunchSpec(argv, env, spec.side)

    return spec_for


def cli(*args: str):
    """The CLI's result, its output with line wraps undone (wrap points move with the temp path's length)."""
    from speedrun.cli import _register_commands, app

    _register_commands()
    res = CliRunner().invoke(app, list(args))
    res.flat = " ".join(res.output.split())
    return res


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> tuple[Path, Path]:
    """One `speedrun baseline` run (CLI) into a folder: (recipe file, folder)."""
    tmp = tmp_path_factory.mktemp("search")
    recipe_file = tmp / "fake-baseline.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe_dict(tmp)))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("speedrun.eval.serve.default_spec", fake_sglang())
        res = cli("baseline", str(recipe_file), "--out", str(tmp / "search"), "--no-progress")
    assert res.exit_code == 0, res.output
    assert "flashmla-p64" in res.flat and "lock:" in res.flat
    return recipe_file, tmp / "search"


def rows(folder: Path) -> dict[str, dict]:
    return {c["label"]: c for c in json.loads((folder / bl.SEARCH_JSON).read_text())["candidates"]}


def test_search_locks_the_fastest_and_reports_the_rest(searched):
    recipe_file, out = searched
    lock = locks.load(out / locks.LOCK_NAME, load_recipe(recipe_file))
    assert lock.best.label == "flashmla-p64"
    assert lock.best.server == {"attention_backend": "flashmla", "page_size": 64}
    assert lock.probe["concurrency"] == 4 and lock.probe["prompts"] == 8  # the middle of [2, 4, 8], 2 x c
    got = rows(out)
    assert list(got) == ["triton", "flashinfer", "flashmla-p64", "fa3", "nokernel", "recipe", "moe-cutlass"]
    assert {k: v["status"] for k, v in got.items()} == {
        "triton": "ok", "flashinfer": "ok", "flashmla-p64": "ok", "fa3": "failed", "nokernel": "skipped",
        "recipe": "same", "moe-cutlass": "ok",
    }  # fmt: skip
    speed = {k: v["output_throughput"] for k, v in got.items() if v["status"] == "ok"}
    assert speed["flashmla-p64"] > max(speed["triton"], speed["flashinfer"], speed["moe-cutlass"])
    assert speed["flashinfer"] > speed["triton"]  # 10 ms vs 20 ms extra per token: the probe ranks them
    # the MoE stage ran on top of the fastest attention candidate
    assert got["moe-cutlass"]["server"] == {"attention_backend": "flashmla", "page_size": 64,
                                             "moe_runner_backend": "cutlass"}  # fmt: skip
    assert "--attention-backend flashmla --page-size 64" in got["flashmla-p64"]["launch"]
    assert "same configuration as triton" in got["recipe"]["error"]
    # each candidate is a stock side under its own name: its folder and results file, no overlays requested
    cand = json.loads((out / "candidates" / "flashmla-p64.json").read_text())
    assert cand["side"] == "flashmla-p64" and cand["overlays_requested"] == []
    assert (out / "candidates" / "flashmla-p64" / "server.log").is_file()
    assert "no_such_module_xyz" in got["nokernel"]["error"]
    assert "cannot start with --attention-backend=fa3" in got["fa3"]["log_tail"]
    for label in ("triton", "flashinfer", "flashmla-p64", "fa3", "moe-cutlass"):  # every served one's log kept
        log = out / "candidates" / label / "server.log"
        assert log.is_file() and "speedrun.eval.fakeserver" in log.read_text(), label
    md = (out / bl.SEARCH_MD).read_text()
    assert "**Fastest: flashmla-p64**" in md and "| fa3 |" in md and "cannot start with" in md
    assert "own stock configuration (row `recipe`): attention_backend=triton, kv_cache_dtype=auto." in md
    assert lock.candidates[3].log_tail == "" and got["fa3"]["log_tail"]  # tails in the report, not the lock


def test_run_uses_the_lock_in_its_folder(searched, tmp_path, monkeypatch):
    """`speedrun run --out FOLDER` finds the lock there: the baseline serves flashmla at page 64, the overlay keeps
    flashmla for prefill and decodes with speedrun_mla; the report names the beaten configuration and the others."""
    recipe_file, out = searched
    folder = tmp_path / "run"
    shutil.copytree(out, folder)
    seen: list = []
    monkeypatch.setattr("speedrun.eval.run.default_spec", fake_sglang(seen))
    res = cli("run", str(recipe_file), "--out", str(folder), "--concurrency", "2", "--no-progress")
    assert res.exit_code == 0, res.output
    assert "baseline: flashmla-p64" in res.flat
    (_, base), (_, over) = seen
    assert "--attention-backend flashmla --page-size 64" in base and "speedrun_mla" not in base
    for part in ("--attention-backend flashmla", "--decode-attention-backend speedrun_mla",
                 "--prefill-attention-backend flashmla", "--page-size 64"):  # fmt: skip
        assert part in over, over
    md = (folder / "report.md").read_text()
    section = md.split("## Baseline", 1)[1].split("## Throughput", 1)[0]
    assert "**flashmla-p64** (attention_backend=flashmla, page_size=64, kv_cache_dtype=auto)" in section
    assert "The overlay beat flashmla-p64 at:" in section
    for label in ("flashinfer", "triton", "recipe", "fa3", "moe-cutlass"):
        assert f"| {label} |" in section, label
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["baseline_config"]["best"]["label"] == "flashmla-p64"
    # The search ran without a GPU: the lock names no card, and this run had none to compare with.
    assert "on a card the lock does not name" in section and "Not re-probed" not in section


def test_run_ops_ablation_keeps_the_lock_and_drops_our_attention(searched, tmp_path, monkeypatch):
    """`speedrun run --ops mxfp4_moe` (an ablation) on a recipe with two overlays: the overlay side serves the MoE
    overlay only, attends with the lock's stock backend (no speedrun_mla flag left), keeps the MoE runner flag,
    requests only mxfp4_moe, and the report says what was off; an op the recipe does not enable is a usage error
    naming it (exit 2), before anything is served."""
    recipe_file, out = searched
    two = yaml.safe_load(recipe_file.read_text())  # the locked recipe (same model path: the lock's fingerprint)
    server = {"decode_attention_backend": "speedrun_mla", "moe_runner_backend": "triton"}
    two["overlays"] = {"mla_decode": {"enabled": True}, "mxfp4_moe": {"enabled": True}, "server": server}
    other = tmp_path / "fake-baseline.yaml"
    other.write_text(yaml.safe_dump(two))
    folder = tmp_path / "run"
    shutil.copytree(out, folder)
    seen: list = []
    monkeypatch.setattr("speedrun.eval.run.default_spec", fake_sglang(seen))
    res = cli("run", str(other), "--out", str(folder), "--concurrency", "2", "--no-progress", "--ops", "mxfp4_moe")
    assert res.exit_code == 0, res.output
    (_, base), (_, over) = seen
    assert "speedrun_mla" not in over and "--attention-backend flashmla" in over and "--page-size 64" in over, over
    assert "--moe-runner-backend triton" in over and "--moe-runner-backend" not in base
    overlay = json.loads((folder / "overlay.json").read_text())
    assert overlay["overlays_requested"] == ["mxfp4_moe"]
    assert "overlay side with mxfp4_moe only (--ops): mla_decode off" in (folder / "report.md").read_text()
    bad = cli("run", str(other), "--out", str(tmp_path / "r2"), "--ops", "mxfp4_gemm", "--no-progress")
    assert bad.exit_code == 2 and "'mxfp4_gemm' is not one of the enabled overlays (mla_decode, mxfp4_moe)" in bad.flat
    assert not (tmp_path / "r2").exists()


def test_report_says_when_the_lock_was_probed_on_another_card():
    """A lock carries the card its candidates were measured on; a run on another card says its baseline was not
    re-probed there (an H100 lock served on an H200), and a run on the same card says which card that was."""
    info = {"searched": True, "server": {"attention_backend": "flashmla"}, "lock": "x/baseline.lock.json",
            "created": "2026-12-06", "probe": {"isl": 8192, "osl": 1024, "concurrency": 32, "prompts": 64},
            "best": {"label": "flashmla-p64"}, "candidates": [], "lock_gpu": "NVIDIA H100 80GB HBM3"}  # fmt: skip
    other = "\n".join(locks.report_lines({**info, "run_gpu": "NVIDIA H200"}, []))
    assert "fastest configuration on NVIDIA H100 80GB HBM3" in other
    assert "**Not re-probed on this run's card (NVIDIA H200)**" in other
    same = "\n".join(locks.report_lines({**info, "run_gpu": "NVIDIA H100 80GB HBM3"}, []))
    assert "on this card (NVIDIA H100 80GB HBM3)" in same and "Not re-probed" not in same
    lock = locks.BaselineLock.model_validate({"recipe": "r", "fingerprint": "f", "arch": "sm90", "created": "c",
                                              "probe": {}, "best": {"label": "b", "stage": "attention",
                                                                    "status": "ok"}, "candidates": []})  # fmt: skip
    assert lock.gpu is None  # locks written before the card was recorded still load


def test_run_without_lock_says_the_baseline_was_not_searched(tmp_path):
    recipe = Recipe.model_validate(recipe_dict(tmp_path))
    opts = Options(out=tmp_path / "run", scale=Scale(concurrency=[2]), show_progress=False, accuracy=False)
    c = run(recipe, opts, fake_sglang())
    assert c is not None and c.passed
    md = (opts.out / "report.md").read_text()
    assert "the recipe's fixed stock configuration (attention_backend=triton, kv_cache_dtype=auto)" in md
    assert "**not a searched one**" in md


def test_lock_for_another_recipe_setting_is_refused(searched, tmp_path):
    recipe_file, out = searched
    changed = yaml.safe_load(recipe_file.read_text())
    changed["server"]["kv_cache_dtype"] = "fp8_e4m3"
    other = tmp_path / "fake-baseline.yaml"
    other.write_text(yaml.safe_dump(changed))
    with pytest.raises(locks.LockError, match="resolved for recipe 'fake-baseline' as it was then"):
        locks.load(out / locks.LOCK_NAME, load_recipe(other))
    res = cli("run", str(other), "--baseline-lock", str(out / locks.LOCK_NAME), "--out", str(tmp_path / "r"))
    assert res.exit_code == 2 and "speedrun baseline fake-baseline" in res.flat
    assert "Traceback" not in res.output and not (tmp_path / "r" / "baseline.json").exists()
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "x"}')
    with pytest.raises(locks.LockError, match="bad.json: not a baseline lock"):
        locks.load(bad, load_recipe(recipe_file))


def test_lock_holds_the_probe_server_only(searched, tmp_path):
    """The search probed at c4 (the middle of 2, 4, 8): a server setting for c8 alone (e.g. more CUDA graphs for a
    larger batch) leaves the lock valid; one that reaches c4 changes the server the probe ran on and is refused."""
    recipe_file, out = searched
    assert json.loads((out / locks.LOCK_NAME).read_text())["probe"]["concurrency"] == 4
    for above, valid in ((4, True), (2, False)):
        changed = yaml.safe_load(recipe_file.read_text())
        changed["server_by_concurrency"] = [{"concurrency_above": above, "server": {"cuda_graph_max_bs": 8}}]
        other = tmp_path / f"above{above}" / "fake-baseline.yaml"
        other.parent.mkdir()
        other.write_text(yaml.safe_dump(changed))
        if valid:
            assert locks.load(out / locks.LOCK_NAME, load_recipe(other)).best.label == "flashmla-p64"
        else:
            with pytest.raises(locks.LockError, match="the probe's server changed"):
                locks.load(out / locks.LOCK_NAME, load_recipe(other))


def test_search_split_over_calls_keeps_earlier_results(searched, tmp_path, monkeypatch):
    recipe_file, out = searched
    folder = tmp_path / "search"
    shutil.copytree(out, folder)
    before = rows(folder)
    seen: list = []
    monkeypatch.setattr("speedrun.eval.serve.default_spec", fake_sglang(seen))
    res = cli("baseline", str(recipe_file), "--out", str(folder), "--candidates", "flashinfer", "--no-progress")
    assert res.exit_code == 0, res.output
    assert [flags for _, flags in seen] == [seen[0][1]] and "flashinfer" in seen[0][1]  # only it was served
    after = rows(folder)
    assert after["flashmla-p64"] == before["flashmla-p64"] and after["moe-cutlass"] == before["moe-cutlass"]
    assert after["flashinfer"]["output_throughput"] != before["flashinfer"]["output_throughput"]  # measured again
    assert json.loads((folder / locks.LOCK_NAME).read_text())["best"]["label"] == "flashmla-p64"
    res = cli("baseline", str(recipe_file), "--out", str(folder), "--candidates", "nope")
    assert res.exit_code == 2 and "unknown label(s) ['nope']" in res.flat


def test_search_with_no_finished_candidate_writes_no_lock(tmp_path, monkeypatch):
    d = recipe_dict(tmp_path)
    d["baseline"] |= {"candidates": [{"label": "fa3", "server": {"attention_backend": "fa3"}}]}
    d["server"]["attention_backend"] = "fa3"  # the recipe's own configuration fails too
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(yaml.safe_dump(d))
    monkeypatch.setattr("speedrun.eval.serve.default_spec", fake_sglang())
    res = cli("baseline", str(recipe_file), "--out", str(tmp_path / "s"), "--no-progress")
    assert res.exit_code == 1 and "no lock written" in res.flat
    assert not (tmp_path / "s" / locks.LOCK_NAME).exists()
    got = rows(tmp_path / "s")
    assert got["fa3"]["status"] == "failed" and got["recipe"]["status"] == "same"
    assert "MoE runner stage not run" in (tmp_path / "s" / bl.SEARCH_MD).read_text()


def test_server_per_concurrency_bucket(tmp_path):
    """c2 and c4 on different servers (chunked prefill 1024 above concurrency 2, which the fake makes slower);
    accuracy (agreement samples) runs once, on the first server."""
    d = recipe_dict(
        tmp_path, server_by_concurrency=[{"concurrency_above": 2, "server": {"chunked_prefill_size": 1024}}]
    )
    d["accuracy"] = {"agreement": {"prompts": 2, "prompt_len": 8, "tokens": 4}}
    recipe = Recipe.model_validate(d)
    seen: list = []
    opts = Options(out=tmp_path / "run", scale=Scale(concurrency=[2, 4]), show_progress=False)
    c = run(recipe, opts, fake_sglang(seen))
    assert c is not None and c.passed, [g for g in c.gates if not g.passed]
    assert [side for side, _ in seen] == ["baseline", "baseline", "overlay", "overlay"]
    assert ["--chunked-prefill-size 1024" in flags for _, flags in seen] == [False, True, False, True]
    base = json.loads((opts.out / "baseline.json").read_text())
    assert list(base["launches"]) == ["c1-2", "c3-up"] and set(base["startup_s"]) == {"c1-2", "c3-up"}
    assert (opts.out / "baseline" / "server-c3-up" / "server.log").is_file()
    tpot = {s["name"]: s["metrics"]["median_tpot_ms"] for s in base["scenarios"]}
    assert tpot["isl64-osl16-c4"] > 25 > tpot["isl64-osl16-c2"]  # c4 really ran on the bucket's server
    assert len(base["accuracy"]["agreement_samples"]["samples"]) == 2


def test_bucket_rule_and_recipe_errors(tmp_path):
    d = recipe_dict(tmp_path, server_by_concurrency=[
        {"concurrency_above": 32, "server": {"chunked_prefill_size": 32768}},
        {"concurrency_above": 64, "server": {"cuda_graph_max_bs": 256}},
    ])  # fmt: skip
    r = Recipe.model_validate(d)
    assert [r.bucket_for(c) and r.bucket_for(c).concurrency_above for c in (1, 32, 33, 64, 65)] == [
        None, None, 32, 32, 64]  # fmt: skip
    assert r.at_concurrency(32).server.chunked_prefill_size is None
    assert r.at_concurrency(64).server.chunked_prefill_size == 32768
    assert r.at_concurrency(128).server.cuda_graph_max_bs == 256  # only the largest bound below applies
    assert r.at_concurrency(128).server.chunked_prefill_size is None
    argv = build(r, side=Side.BASELINE, port=1, concurrency=40).argv
    assert argv[argv.index("--chunked-prefill-size") + 1] == "32768"
    assert "--chunked-prefill-size" not in build(r, side=Side.BASELINE, port=1).argv
    bad = {
        "dup": ([{"concurrency_above": 4, "server": {}}] * 2, "concurrency_above values must be distinct"),
        "field": ([{"concurrency_above": 4, "server": {"chunk": 1}}], "unknown server field(s) ['chunk']"),
        "value": ([{"concurrency_above": 4, "server": {"tp": "x"}}], "concurrency_above=4]: tp: Input should be"),
    }
    for name, (buckets, msg) in bad.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(recipe_dict(tmp_path, server_by_concurrency=buckets)))
        with pytest.raises(RecipeError, match=re.escape(msg)):
            load_recipe(path)
    d = recipe_dict(tmp_path)
    d["baseline"]["candidates"][0]["label"] = "overlay"
    with pytest.raises(ValueError, match="label 'overlay' is reserved"):
        Recipe.model_validate(d)


def test_card_defaults():
    ds = load_recipe("synth-deepseek-mxfp4-l30-h100")
    assert [p.label for p in bl.attention_plan(ds)] == ["triton", "flashinfer", "flashmla-p64", "fa3", "recipe"]
    assert bl.quantization(ds) == "fp8_block"  # the baseline serves the FP8 slice
    best = locks.CandidateResult(label="flashmla-p64", stage="attention", status="ok",
                                 server={"attention_backend": "flashmla", "page_size": 64})  # fmt: skip
    moe = bl.moe_plan(ds, best)
    assert [p.label for p in moe] == ["moe-cutlass", "moe-deep_gemm"] and moe[1].requires == ["deep_gemm"]
    assert moe[0].server == {"attention_backend": "flashmla", "page_size": 64, "moe_runner_backend": "cutlass"}
    oss = load_recipe("synth-gpt-oss-h100")
    assert "flashmla-p64" not in [p.label for p in bl.attention_plan(oss)]  # MLA only
    finals = load_recipe("deepseek-r1-mxfp4-mi355x")
    assert [p.label for p in bl.attention_plan(finals)] == ["aiter", "triton", "recipe"]


def test_importable_and_fake_flag_keys():
    got = bl.importable(["json", "no_such_module_xyz"], sys.executable)
    assert got["json"] == "" and "ModuleNotFoundError" in got["no_such_module_xyz"]
    keys = flag_keys(["--model-path", "m", "--disable-radix-cache", "--page-size", "64"])
    assert keys == ["--model-path=m", "--disable-radix-cache", "--page-size=64"]


def test_flashinfer_moe_candidate_needs_its_module_built(tmp_path, monkeypatch):
    """GPT-OSS on sm90 also tries stock's FlashInfer CUTLASS MXFP4 MoE, but only where FlashInfer's fused_moe_90
    module is built already (prebuilt or JIT-cached): its first-use compile would outlast the server start. The
    check reads the two folders FlashInfer loads modules from (flashinfer.jit.env; a stand-in package here, the
    CPU test environment has no FlashInfer)."""
    oss = load_recipe("synth-gpt-oss-l24-h100")
    best = locks.CandidateResult(label="recipe", stage="recipe", status="ok", server={"attention_backend": "triton"})
    moe = {p.label: p for p in bl.moe_plan(oss, best)}
    need = bl.BUILT + "fused_moe_90"
    assert list(moe) == ["moe-marlin", "moe-triton", "moe-flashinfer_mxfp4"]
    assert moe["moe-flashinfer_mxfp4"].requires == [need]
    assert moe["moe-flashinfer_mxfp4"].server["moe_runner_backend"] == "flashinfer_mxfp4"
    pkg = tmp_path / "site" / "flashinfer" / "jit"
    pkg.mkdir(parents=True)
    (pkg.parent / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    aot, jit = tmp_path / "aot", tmp_path / "cached_ops"
    (pkg / "env.py").write_text(f"import pathlib\nFLASHINFER_AOT_DIR = pathlib.Path({str(aot)!r})\n"
                                f"FLASHINFER_JIT_DIR = pathlib.Path({str(jit)!r})\n")  # fmt: skip
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))
    why = bl.importable([need], sys.executable)[need]
    assert why.startswith("FlashInfer module fused_moe_90 is not built") and str(jit) in why
    (jit / "fused_moe_90").mkdir(parents=True)
    (jit / "fused_moe_90" / "fused_moe_90.so").write_bytes(b"")
    assert bl.importable([need], sys.executable) == {need: ""}
