"""The device breakdown scripts (scripts/device/moe_breakdown.py, gemm_breakdown.py) import and run their
pure-Python parts on CPU, so a change of the bench API they build on fails here, not on the GPU host; and
eval/kernels/breakdown.py's rows, on hand-made trace events and on a real (CPU) torch profiler trace."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import os
from pathlib import Path

import torch

if not torch.cuda.is_available():  # the scripts import the benches, which decorate the kernels (test_benches.py)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

from speedrun.eval.kernels import breakdown

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts" / "device"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"device_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def kernel(name: str, ts: float, dur: float) -> dict:
    return {"ph": "X", "cat": "kernel", "name": name, "ts": ts, "dur": dur}


def calls(names_durs: list[tuple[str, float]], n: int, gap: float, between: float) -> list[dict]:
    """`n` calls, each launching `names_durs` in order `gap` µs apart, calls `between` µs apart; plus noise."""
    out, t = [{"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": 0.0, "dur": 3.0}], 100.0
    for _ in range(n):
        for i, (name, dur) in enumerate(names_durs):
            t += gap if i else 0.0
            out.append(kernel(name, t, dur))
            t += dur
        t += between
    return out


def test_gemm_breakdown_rows_and_graph_gaps():
    gemm = load("gemm_breakdown")
    args = gemm.parse_args(["--out", "x.json"])
    assert args.shapes == list(gemm.SHAPES) and args.impls == ["speedrun"] and args.repeats == gemm.REPEATS
    two = gemm.parse_args(["--out", "x", "--shapes", "1x2112x7168,64x7168x2048"]).shapes
    assert two == [(1, 2112, 7168), (64, 7168, 2048)]
    events = calls([("quantize_kernel", 2.0), ("mxfp4_gemm_kernel", 8.0)], n=4, gap=1.5, between=4.0)
    rows = gemm.rows_for((1, 2112, 7168), "speedrun", "graph", events, calls=4)
    assert [r["kernel"] for r in rows] == ["mxfp4_gemm_kernel", "quantize_kernel", "calls"]
    assert rows[0] | {"share": 0} == {"m": 1, "n": 2112, "k": 7168, "impl": "speedrun", "mode": "graph",
                                      "kernel": "mxfp4_gemm_kernel", "launches_per_call": 1.0, "us": 8.0,
                                      "us_per_launch": 8.0, "share": 0}  # fmt: skip
    assert rows[0]["share"] == 0.8
    call = rows[-1]
    assert call["launches_per_call"] == 2 and call["us"] == 10.0
    from speedrun.eval.kernels.mxfp4_gemm_bench import _bytes

    assert call["gbps"] == round(_bytes(1, 2112, 7168) / 10.0 / 1e3, 1)
    gaps = call["gaps"]
    assert gaps["calls"] == 4 and gaps["gap_within_call_us"] == {"mean": 1.5, "min": 1.5, "max": 1.5}
    assert gaps["gap_between_calls_us"]["mean"] == 4.0 and gaps["call_span_us"]["mean"] == 11.5


def test_gaps_refuse_a_count_that_does_not_divide_into_calls():
    events = calls([("a", 1.0), ("b", 1.0)], n=3, gap=0.5, between=1.0)[:-1]  # one launch lost
    assert breakdown.launch_gaps(events, 2) == {"kernels": 5, "per_call": 2}


def test_moe_breakdown_rows_give_the_gemms_weight_bandwidth():
    moe = load("moe_breakdown")
    args = moe.parse_args(["--out", "m.json", "--ms", "1,16"])
    assert args.ms == [1, 16] and args.models == list(moe.MODELS)
    ds = moe.MODELS["deepseek-r1-mxfp4-tp8"]
    wbytes = moe.weight_bytes(9.0, ds.hidden, ds.inter)
    events = calls([("_sort_kernel", 3.0), ("_fused_moe_gemm1_kernel", 20.0), ("_fused_moe_gemm2_kernel", 10.0)],
                   n=8, gap=2.0, between=5.0)  # fmt: skip
    rows = moe.rows_for("deepseek-r1-mxfp4-tp8", 1, "tpe<=1", events, 8, wbytes)
    by = {r["kernel"]: r for r in rows}
    assert by["_fused_moe_gemm1_kernel"]["weight_GBps"] == round(wbytes["gemm1"] / 20.0 / 1e3, 1)
    assert by["_fused_moe_gemm2_kernel"]["weight_GBps"] == round(wbytes["gemm2"] / 10.0 / 1e3, 1)
    assert "weight_GBps" not in by["_sort_kernel"]
    assert by["calls"]["launches_per_call"] == 3 and by["calls"]["us"] == 33.0
    assert by["calls"]["gaps"]["gap_within_call_us"]["mean"] == 2.0


def test_bad_options_name_the_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        load("gemm_breakdown").parse_args(["--out", "x", "--impls", "speedrun,cutlass"])
    assert exc.value.code == 2 and "--impls: unknown ['cutlass']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        load("moe_breakdown").parse_args(["--out", "x", "--models", "llama"])
    assert "--models: unknown ['llama']" in capsys.readouterr().err


def test_a_real_profiler_trace_reads_back():
    """The torch profiler's own Chrome trace (CPU ops here; kernels on the GPU host) through the same export and
    reading: per-op launches per call come out right."""
    from torch.profiler import ProfilerActivity, profile

    a = torch.randn(64, 64)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            torch.mm(a, a)
            torch.relu(a)
    events = breakdown.trace_events(prof)
    rows = {r["kernel"]: r for r in breakdown.per_kernel(events, calls=3, cat="cpu_op")}
    assert rows["aten::mm"]["launches_per_call"] == 1.0 and rows["aten::relu"]["launches_per_call"] == 1.0
    assert rows["aten::mm"]["us"] > 0


def call_mismatches(source: str, names: dict) -> list[str]:
    """Every call in `source` to a function it took from speedrun (a name or `alias.attr` in `names`, the module's
    globals) whose arguments do not bind to that function's signature: GPU-only code's API drift, found on CPU."""
    bad = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or any(isinstance(a, ast.Starred) for a in node.args):
            continue
        target = _resolve(names, node.func)
        if target is None or any(kw.arg is None for kw in node.keywords):
            continue
        try:
            inspect.signature(target).bind(*node.args, **{kw.arg: kw.value for kw in node.keywords})
        except TypeError as exc:
            bad.append(f"line {node.lineno}: {ast.unparse(node)[:80]}: {exc}")
    return bad


def _resolve(names: dict, func: ast.expr):
    obj = None
    if isinstance(func, ast.Name):
        obj = names.get(func.id)
    elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        obj = getattr(names.get(func.value.id), func.attr, None)
    return obj if callable(obj) and (getattr(obj, "__module__", None) or "").startswith("speedrun.") else None


@pytest.mark.parametrize("name", ["moe_breakdown", "gemm_breakdown"])
def test_scripts_call_the_bench_api_as_it_is(name: str):
    module = load(name)
    assert call_mismatches(Path(module.__file__).read_text(), vars(module)) == []


def test_the_drift_check_catches_the_call_that_broke_moe_breakdown():
    moe = load("moe_breakdown")
    bad = call_mismatches("sets = routing_sets(m, e, topk, h)\n", vars(moe))
    assert len(bad) == 1 and "too many positional arguments" in bad[0]
    assert call_mismatches("routing_sets(m, model)\nbreakdown.per_kernel(events, calls, cat='x')\n", vars(moe)) == []


def test_deepgemm_warmup_m_lists_follow_sglang():
    """sglang 0.5.17's own count for the fast list at a 16384 chunk is 3072 (compile_utils' comment); the full list
    covers every M to 16384 at the H100 default chunk (8192) and to twice a larger chunk."""
    dg = load("deepgemm_warmup")
    fast = dg.fast_ms(8192)
    assert len(dg.fast_ms(16384)) == 3072 and len(fast) == 2560
    assert fast[:1024] == list(range(1, 1025)) and fast[-2:] == [8184, 8192] and 2050 not in fast and 2052 in fast
    assert dg.full_ms(8192) == list(range(1, 16385)) and len(dg.full_ms(16384)) == 32768
    assert set(fast) <= set(dg.full_ms(8192))
