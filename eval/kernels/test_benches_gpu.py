"""GPU: the shared timer, then each op bench end to end on one small shape, new stock baselines included.

One command on the GPU host (after the bundle's install/env lines, README "On the GPU host"):
    python3 -m pytest -m gpu eval/kernels/test_benches_gpu.py -v -s -p no:cacheprovider
Each bench test prints its summary table and fails naming the impl and field that is wrong.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch

from speedrun.eval.kernels import timer

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA/ROCm GPU")]


def _rows(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    data = json.loads(path.read_text())
    return data["meta"], data["rows"]


def _check_timed(row: dict[str, Any]) -> None:
    """A row timed by the shared timer: median inside [p10, p90], a graph over >= 1 copy, a flush past the cache."""
    shape = {k: row[k] for k in ("m", "n", "k", "bs", "kv_len", "model") if k in row}
    where = f"{row['impl']} {shape}"
    assert row.get("us"), f"{where}: no time: {row.get('error')}"
    t = row["timing"]
    assert t["method"] == "cuda_graph", f"{where}: not graph-captured: {t.get('fallback')}"
    assert t["copies"] >= 1 and t["replays"] >= timer.MIN_REPLAYS, f"{where}: {t}"
    assert t["flush_bytes"] >= 2 * timer.device_cache_bytes(), f"{where}: {t}"
    assert row["us_p10"] <= row["us"] <= row["us_p90"], f"{where}: {row}"


def test_timer_graph_flush_and_eager_fallback():
    """A copy kernel over 8 MB (fits in L2): timed over distinct copies after flushes it cannot beat HBM; a call
    that refuses capture is timed eagerly, saying why."""
    src = torch.randn(2 << 20, device="cuda")  # 8 MB
    copies = timer.Copies((src, torch.empty_like(src)))
    t = timer.time_calls(lambda i: partial(torch.Tensor.copy_, *reversed(copies(i))), 16 << 20, 16 << 20)
    assert t.method == "cuda_graph" and t.copies * (16 << 20) > timer.device_cache_bytes(), t
    gbps = (16 << 20) / t.us / 1e3
    peak = timer.hbm_peak(torch.cuda.get_device_name())[1] / 1e9
    print(f"\n8 MB copy: {t.us:.2f} us ({gbps:.0f} GB/s of {peak:.0f} nominal), {t.block()}")
    assert gbps < 1.05 * peak, "faster than HBM: the flush or the copies do not keep the data out of cache"

    def uncapturable() -> torch.Tensor:
        if torch.cuda.is_current_stream_capturing():
            raise RuntimeError("not under capture")
        return src.sum()

    e = timer.time_calls(lambda i: uncapturable, 8 << 20, copies=2, replays=5)
    assert e.method == "eager" and "not under capture" in e.fallback and e.us > 0, e


def test_gemm_bench_small_shape(tmp_path: Path):
    """16 x 2112 x 7168 (DeepSeek fused_qkv_a): ours, stock's FP8 block GEMMs, dequant+cuBLAS, bf16 cuBLAS."""
    from speedrun.eval.kernels import mxfp4_gemm_bench as bench
    from speedrun.eval.kernels.stock import deepgemm_available

    assert bench.main(["--out", str(tmp_path), "--shape", "16x2112x7168"]) == 0
    meta, rows = _rows(tmp_path / "mxfp4_gemm.json")
    by = {r["impl"]: r for r in rows}
    print(f"\nstock FP8 dispatch here: {meta['baselines']['stock_dispatch_here']}")
    assert set(by) == set(bench.IMPLS), sorted(by)
    need = [i for i in bench.IMPLS if i != "fp8_deepgemm" or deepgemm_available()]
    for impl in need:
        _check_timed(by[impl])
    limits = {"speedrun": 0.35, "fp8_deepgemm": 0.1, "fp8_triton": 0.1, "dequant_cublas": 0.01, "bf16_cublas": 0.01}
    for impl in need:
        assert by[impl]["rel_err"] < limits[impl], f"{impl}: rel_err {by[impl]['rel_err']} vs fp32 product"
    assert set(by["speedrun"]["speedup_vs"]) == set(need) - {"speedrun"}
    assert meta["timing"]["method"] == "cuda_graph" and 0 < by["speedrun"]["pct_hbm_peak"] < 105


def test_gemm_bench_survives_failing_baselines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Round 4's H100 run lost every GEMM row when the run ended inside DeepGEMM's JIT: a baseline that raises,
    or calls sys.exit, is an error cell of its row, the other impls and shapes are timed, the JSON has them all."""
    import sys

    from speedrun.eval.kernels import mxfp4_gemm_baselines as baselines
    from speedrun.eval.kernels import mxfp4_gemm_bench as bench

    def jit_fails():
        raise RuntimeError("NVCC compilation failed: \n")

    monkeypatch.setitem(baselines.FP8_BUILDERS, "fp8_deepgemm", jit_fails)
    monkeypatch.setitem(baselines.FP8_BUILDERS, "fp8_triton", lambda: sys.exit("gave up"))
    assert bench.main(["--out", str(tmp_path), "--shape", "1x2112x7168", "--shape", "16x2112x7168"]) == 0
    meta, rows = _rows(tmp_path / "mxfp4_gemm.json")
    assert meta["complete"] and len(rows) == 2 * len(bench.IMPLS)
    for row in rows:
        if row["impl"] == "fp8_deepgemm":
            assert row["us"] is None and row["error"] == "RuntimeError: NVCC compilation failed:", row
        elif row["impl"] == "fp8_triton":
            assert row["us"] is None and row["error"] == "SystemExit: gave up", row
        else:
            _check_timed(row)
    assert (tmp_path / "mxfp4_gemm.png").exists()


def test_stock_fp8_gemm_default_is_available():
    """Stock 0.5.17 on sm90 serves FP8 block linears with DeepGEMM (sgl-deep-gemm is an sglang dependency); the
    GPU bundle must carry it or the fp8_deepgemm row cannot be timed."""
    from speedrun.eval.kernels.mxfp4_gemm_baselines import MISSING_DEEPGEMM, stock_dispatch
    from speedrun.eval.kernels.stock import deepgemm_available

    assert deepgemm_available(), MISSING_DEEPGEMM
    assert stock_dispatch() == "deepgemm_w8a8_block_fp8_linear_with_fallback"


def test_moe_bench_small_shape(tmp_path: Path):
    """DeepSeek-R1 MXFP4 TP8 shard at M=4: ours (swz128, plain), stock's FP8 block fused MoE, dequant+fused_moe."""
    from speedrun.eval.kernels import mxfp4_moe_bench as bench

    assert bench.main(["--out", str(tmp_path), "--models", "deepseek-r1-mxfp4-tp8", "--ms", "4"]) == 0
    _, rows = _rows(tmp_path / "mxfp4_moe.json")
    by = {r["impl"]: r for r in rows}
    assert set(by) == {"speedrun", "speedrun_plain", "fp8_fused_moe", "dequant_fused_moe"}, sorted(by)
    for row in by.values():
        _check_timed(row)
    stock = by["fp8_fused_moe"]["stock"]
    print(f"\nstock FP8 MoE config: {stock}")
    assert "config" in stock and stock["config"]["BLOCK_SIZE_K"] % 128 == 0 and stock["source"], stock
    for impl in ("speedrun_plain", "fp8_fused_moe", "dequant_fused_moe"):  # same weights; activation quant differs
        assert by[impl]["rel_diff_vs_speedrun"] < 0.35, f"{impl}: {by[impl]['rel_diff_vs_speedrun']}"
    assert set(by["speedrun"]["speedup_vs"]) == {"speedrun_plain", "fp8_fused_moe", "dequant_fused_moe"}


def test_mla_bench_small_shape(tmp_path: Path):
    """bs 4, kv 1024, bf16: ours, SGLang's triton decode, FlashMLA (flashinfer is left out: its first use
    JIT-compiles for minutes on a fresh host; the full bench still runs it)."""
    from speedrun.eval.kernels import mla_decode_bench as bench

    impls = "speedrun,sglang_triton,flashmla"
    assert bench.main(["--out", str(tmp_path), "--shape", "4:1024:bf16", "--impls", impls]) == 0
    _, rows = _rows(tmp_path / "mla_decode.json")
    by = {r["impl"]: r for r in rows}
    assert set(by) == set(impls.split(",")), sorted(by)
    for row in by.values():
        _check_timed(row)
    for impl in ("sglang_triton", "flashmla"):
        assert by[impl]["max_diff_vs_speedrun"] < 0.05, f"{impl}: {by[impl]['max_diff_vs_speedrun']}"
