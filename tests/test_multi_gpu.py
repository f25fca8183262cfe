"""The multi-GPU run's checks (scripts/device/multi_gpu.sh): reports per rank, multicast off, script syntax."""

import json
import subprocess
from pathlib import Path

from speedrun.eval.readiness import ranks

ROOT = Path(__file__).resolve().parents[1]


def rep(rank, calls=None, role="scheduler", **kw):
    return {"role": role, "tp_rank": rank, "pid": 100 + (rank or 0), "applied": ["x"],
            "calls": {"mla_decode:triton": 5} if calls is None else calls, "errors": [], **kw}  # fmt: skip


def test_ranks_ok_and_each_failure():
    launcher = rep(None, calls={}, role="launcher", applied=[])
    assert ranks.check_ranks([launcher, rep(0), rep(1)], 2, ["mla_decode"]) == []
    assert ranks.check_ranks([rep(0)], 2, ["mla_decode"]) == ["rank 1: 0 scheduler reports (expected 1)"]
    assert ranks.check_ranks([rep(0), rep(0), rep(1)], 2, []) == ["rank 0: 2 scheduler reports (expected 1)"]
    zero = ranks.check_ranks([rep(0), rep(1, calls={"mla_decode:triton": 0, "mxfp4_moe": 3})], 2, ["mla_decode"])
    assert zero == ["rank 1: mla_decode has 0 calls"]
    bad = ranks.check_ranks([rep(0, applied=[], errors=["hook failed"]), rep(1), rep(2)], 2, [])
    assert bad == ["scheduler report(s) with tp_rank outside 0..1: [2]", "rank 0 (pid 100): no hooks applied",
                   "rank 0: error: hook failed"]  # fmt: skip


def test_op_calls_prefix_is_exact():
    assert ranks.op_calls({"calls": {"mla_decode": 2, "mla_decode:fp8": 3, "mla_decode_x": 9}}, "mla_decode") == 5


def test_load_reports_from_results_and_folder(tmp_path):
    (tmp_path / "overlay.json").write_text(json.dumps({"overlay_reports": [rep(0), rep(1)]}))
    assert len(ranks.load_reports(tmp_path / "overlay.json")) == 2
    d = tmp_path / "reports"
    d.mkdir()
    (d / "overlay-scheduler-tp0-1.json").write_text(json.dumps(rep(0)))
    (d / "unrelated.json").write_text("{}")
    assert [r["tp_rank"] for r in ranks.load_reports(d)] == [0]


def test_env_seen_and_dry_run(tmp_path):
    good = "== 4242 python -m sglang.launch_server\nNCCL_NVLS_ENABLE=0\nTORCH_SYMM_MEM_DISABLE_MULTICAST=1\n"
    good += "NVSHMEM_DISABLE_NVLS=1\n"
    assert ranks.check_env_seen(good) == []
    assert ranks.check_env_seen("") == ["no SGLang server process was seen by the environment watcher"]
    bad = good + "== 4243 sglang::scheduler_TP1\nNCCL_NVLS_ENABLE=1\n"
    assert len(ranks.check_env_seen(bad)) == 3  # NVLS on, and the two others missing
    assert ranks.parse_environ("A=1\0B=x=y\0") == {"A": "1", "B": "x=y"}
    out = subprocess.run(["speedrun", "launch", "recipes/synth-deepseek-tp2-h200x2.yaml", "--dry-run"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "--tp-size 2" in out and ranks.check_dry_run(out) == []
    assert ranks.check_dry_run(out.replace("NCCL_NVLS_ENABLE=0", "NCCL_NVLS_ENABLE=1")) != []
    (tmp_path / "seen.txt").write_text(good)
    (tmp_path / "dry.txt").write_text(out)
    assert ranks.main(["env", str(tmp_path / "seen.txt"), "--dry-run", str(tmp_path / "dry.txt")]) == 0


def test_reports_cli_exit_codes(tmp_path):
    f = tmp_path / "overlay.json"
    f.write_text(json.dumps({"overlay_reports": [rep(0), rep(1)]}))
    assert ranks.main(["reports", str(f), "--tp", "2", "--ops", "mla_decode"]) == 0
    assert ranks.main(["reports", str(f), "--tp", "4", "--ops", "mla_decode"]) == 1


def test_tp2_recipes_match_the_tp8_slice_per_rank():
    from speedrun.recipe import load_recipe

    slice_ = load_recipe(ROOT / "recipes/synth-deepseek-h100.yaml").model.synthetic.overrides
    r = load_recipe(ROOT / "recipes/synth-deepseek-tp2-h200x2.yaml")
    assert r.server.tp == 2 and r.hardware.gpus == 2
    full = r.model.synthetic.overrides
    for k in ("num_attention_heads", "num_key_value_heads", "intermediate_size", "moe_intermediate_size", "vocab_size"):
        assert full[k] == 2 * slice_[k], k
    g = load_recipe(ROOT / "recipes/synth-gpt-oss-tp2-h200x2.yaml")
    assert g.server.tp == 2 and g.overlays.enabled_ops() == ["mxfp4_moe"]


def test_derive_keeps_the_model(tmp_path):
    from speedrun.recipe import load_recipe

    src = ROOT / "recipes/synth-deepseek-tp2-h200x2.yaml"
    assert ranks.main(["derive", str(src), "--tp", "1", "--out", str(tmp_path / "tp1.yaml")]) == 0
    a, b = load_recipe(src), load_recipe(tmp_path / "tp1.yaml")
    assert (b.name, b.server.tp, b.hardware.gpus) == ("synth-deepseek-tp2-h200x2-tp1", 1, 1)
    assert b.model == a.model and b.overlays == a.overlays and b.accuracy == a.accuracy


def test_gate_picks_agreement_only(tmp_path):
    gates = [{"name": "throughput scenarios", "passed": False, "detail": "0 scenario(s)"},
             {"name": "agreement", "passed": True, "detail": "match 1.0"}]  # fmt: skip
    assert ranks.check_gate({"gates": gates}, "agreement") == []
    gates[1].update(passed=False, detail="match 0.4")
    assert ranks.check_gate({"gates": gates}, "agreement") == ["agreement: match 0.4"]
    assert "no 'agreement' gate" in ranks.check_gate({"gates": gates[:1]}, "agreement")[0]
    (tmp_path / "s.json").write_text(json.dumps({"gates": gates}))
    assert ranks.main(["gate", str(tmp_path / "s.json")]) == 1


def test_script_parses():
    subprocess.run(["bash", "-n", str(ROOT / "scripts/device/multi_gpu.sh")], check=True)
