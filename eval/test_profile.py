"""`speedrun profile`: trace summary maths, and the whole path against a local server whose /start_profile
writes a real torch-profiler trace."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from speedrun.eval import profile


def ev(name: str, ts: float, dur: float, cat: str = "kernel") -> dict:
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur}


def test_summary_sums_by_kernel_and_category_and_measures_busy_time():
    events = [
        ev("_mla_partial_kernel", 0, 10),
        ev("_mla_partial_kernel", 50, 10),
        ev("moe_gemm1_kernel", 20, 20),
        ev("nvjet_tst_64x8_64x16_2x1_v_bz_TNT", 30, 20),  # overlaps the MoE kernel on another stream
        ev("cudaLaunchKernel", 0, 100, cat="cuda_runtime"),  # host side: not a kernel
        {"ph": "i", "cat": "kernel", "name": "marker", "ts": 5},
    ]
    s = profile.summarize(events)
    assert s["kernel_time_us"] == 60 and s["span_us"] == 60 and s["busy_us"] == 50
    assert s["busy_fraction"] == pytest.approx(50 / 60)
    assert [k["name"] for k in s["kernels"]][:1] == ["_mla_partial_kernel"] and s["kernels"][0]["count"] == 2
    assert s["categories"]["attention"]["total_us"] == 20 and s["categories"]["moe"]["total_us"] == 20
    assert s["categories"]["gemm"]["total_us"] == 20
    assert profile.busy_time([(0, 5), (1, 2), (4, 8), (10, 11)]) == 9


@pytest.mark.parametrize(
    "name,cat",
    [("quant_rows_kernel", "moe"), ("quant_fp8_rows_kernel", "moe"), ("combine_kernel", "moe"),
     ("_align_small_kernel", "moe"), ("mxfp4_gemm_kernel", "gemm"),
     ("mxfp4_quant_kernel", "gemm"), ("mla_partial_sm90", "attention"), ("_mla_merge_kernel", "attention"),
     ("void flash::flash_fwd_splitkv_mla_combine_kernel<cutlass::bfloat16_t, float, long, 512, 16>", "attention")],
)  # fmt: skip
def test_our_kernels_land_in_their_ops_category(name: str, cat: str) -> None:
    """The decode profile's per-op table puts each of our kernels under its op (the MoE's quantizer and combine
    are MoE time, not GEMM or other)."""
    assert profile.category(name) == cat


def test_profile_cli_against_a_running_server(tmp_path):
    from speedrun.cli import _register_commands, app
    from speedrun.eval.fakeserver import background

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"vocab_size": 4096}))
    recipe = {"name": "fake-profile", "model": {"path": str(model)},
              "hardware": {"platform": "cuda", "arch": "sm90", "gpus": 1}}  # fmt: skip
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    _register_commands()
    with background() as (url, st):
        args = ["profile", str(tmp_path / "r.yaml"), "--server", url, "--side", "overlay", "--out", str(tmp_path / "p"),
                "--concurrency", "3", "--isl", "16", "--osl", "20", "--steps", "6"]  # fmt: skip
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0, res.output
        assert st.requests == 6  # warm-up batch + the profiled batch
    data = json.loads((tmp_path / "p" / "profile.json").read_text())["sides"]["overlay"]
    assert data["events"] == "cpu_op" and data["steps"] == 6 and data["traces"][0].endswith("-DECODE.trace.json.gz")
    assert any(k["name"] == "aten::mm" and k["count"] == 6 for k in data["kernels"])
    assert "aten::mm" in (tmp_path / "p" / "profile.md").read_text()
    res = CliRunner().invoke(app, [*args[:8], "--osl", "10"])  # too short for 6 steps: a clear error, exit 1
    assert res.exit_code == 1 and "too short" in res.output
