"""The benches' timer, report and stock helpers, as far as a CPU can check them: copy counts, flush size,
statistics, the `timing` block, speedups, exact FP8 block weights, and that no bench imports SGLang at import."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from typing import NamedTuple

import pytest
import torch

from speedrun.eval.kernels import report, timer
from speedrun.eval.kernels.stock import fp8_block_dequant, fp8_block_quant

MB = 1 << 20
H100_L2 = 50 * MB  # what torch reports for an H100 (L2_cache_size)


def test_copies_exceed_the_cache_within_bounds():
    n = timer.plan_copies(7 * MB, 7 * MB, H100_L2, 16 << 30)
    assert n == 8 and n * 7 * MB > H100_L2 >= (n - 1) * 7 * MB  # the fewest that exceed it
    assert timer.plan_copies(10_000, 10_000, H100_L2, 16 << 30) == timer.MAX_COPIES  # tiny ops: capped
    assert timer.plan_copies(200 * MB, 200 * MB, H100_L2, 16 << 30) == timer.MIN_COPIES  # one copy already past it
    assert timer.plan_copies(7 * MB, 3 << 30, H100_L2, 8 << 30) == 2  # each copy allocates 3 GB: the budget rules
    assert timer.plan_copies(7 * MB, 10 << 30, H100_L2, 8 << 30) == 1  # bigger than the budget: still one copy
    assert timer.plan_copies(0, 0, H100_L2, 8 << 30) == timer.MAX_COPIES


def test_flush_is_larger_than_the_cache():
    assert timer.flush_size(H100_L2) == 100 * MB
    assert timer.flush_size(60 * MB + 1) == 121 * MB  # rounded up to a MiB
    assert timer.cache_size(H100_L2, hip=False) == H100_L2
    assert timer.cache_size(4 * MB, hip=True) == 4 * MB + 256 * MB  # MI300-class Infinity Cache counted


def test_replays_and_percentiles():
    assert timer.replay_count(1.0) == 60
    assert timer.replay_count(0.001) == timer.MAX_REPLAYS
    assert timer.replay_count(50.0) == timer.MIN_REPLAYS
    med, p10, p90 = timer.percentiles([float(v) for v in range(1, 12)])
    assert (med, p10, p90) == (6.0, 2.0, 10.0)
    assert timer.percentiles([3.0]) == (3.0, 3.0, 3.0)


def test_timing_block_names_the_method():
    t = timer.Timing(10.123, 9.5, 11.0, "cuda_graph", 8, 100 * MB, 60)
    fields = t.fields()
    assert fields["us"] == 10.12 and fields["us_p10"] == 9.5 and fields["us_p90"] == 11.0
    block = fields["timing"]
    assert block == {"method": "cuda_graph", "copies": 8, "flush_bytes": 100 * MB, "replays": 60,
                     "statistic": timer.STATISTIC}  # fmt: skip
    eager = timer.Timing(1.0, 1.0, 1.0, "eager", 2, MB, 20, fallback="RuntimeError: capture")
    assert eager.block()["fallback"] == "RuntimeError: capture"
    meta = timer.method_meta(H100_L2)
    assert meta["method"] == "cuda_graph" and meta["fallback"] == "eager" and meta["flush_bytes"] == 100 * MB


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", 3.35e12),
        ("NVIDIA H200", 4.8e12),
        ("NVIDIA H100 PCIe", 2.0e12),
        ("AMD Instinct MI355X", 8.0e12),
        ("Some GPU", 3.35e12),
    ],  # fmt: skip
)
def test_hbm_peak_by_device_name(name, peak):
    assert timer.hbm_peak(name)[1] == peak


class Pair(NamedTuple):
    a: torch.Tensor
    tag: str


@dataclasses.dataclass
class Weights:
    w: torch.Tensor
    pair: Pair
    extra: dict
    count: int = 3


def test_copies_clone_every_tensor_and_keep_the_rest():
    base = Weights(torch.arange(6.0), Pair(torch.ones(2), "x"), {"s": torch.zeros(3), "n": 5})
    copies = timer.Copies(base)
    assert copies(0) is base
    one = copies(1)
    assert copies(1) is one and len(copies) == 2
    for got, want in ((one.w, base.w), (one.pair.a, base.pair.a), (one.extra["s"], base.extra["s"])):
        assert torch.equal(got, want) and got.data_ptr() != want.data_ptr()
    assert (one.pair.tag, one.extra["n"], one.count) == ("x", 5, 3) and isinstance(one.pair, Pair)
    assert timer.tensor_bytes(base) == 6 * 4 + 2 * 4 + 3 * 4


def row(impl, us, **kw):
    return {"impl": impl, "m": 1, "us": us, **kw}


def test_speedups_and_table():
    rows = [row("speedrun", 10.0, pct_hbm_peak=40.0), row("fp8", 15.0), row("bf16", 30.0, timing={"method": "eager"}),
            row("gone", None, error="setup: no module"), {**row("speedrun", 5.0), "m": 2}]  # fmt: skip
    report.add_speedups(rows, ("m",))
    assert rows[0]["speedup_vs"] == {"fp8": 1.5, "bf16": 3.0}
    assert rows[4]["speedup_vs"] == {}
    text = report.table(rows, ("m",), ("fp8", "bf16", "gone"))
    lines = text.splitlines()
    assert lines[0].split() == ["m", "speedrun", "us", "fp8", "us", "bf16", "us", "gone", "us", "x", "fp8", "x",
                                "bf16", "x", "gone", "%HBM"]  # fmt: skip
    assert lines[1].split() == ["1", "10.0", "15.0", "30.0*", "error", "1.50", "3.00", "-", "40.0"]
    assert lines[2].split()[:2] == ["2", "5.0"]
    assert report.pct_of_peak(3.35e6, 1.0, 3.35e12) == (3350.0, 100.0)


def mxfp4_like(n: int, k: int, seed: int) -> torch.Tensor:
    """Values of MXFP4 weights (E2M1 codes times a power of two per 32), as the benches' random weights."""
    from speedrun.overlays.mx.format import dequant_mxfp4

    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, generator=g)
    scales = torch.randint(118, 125, (n, k // 32), dtype=torch.uint8, generator=g)
    return dequant_mxfp4(codes, scales, torch.bfloat16)


@pytest.mark.parametrize("shape", [(256, 512), (200, 384), (3, 2, 256, 256)])
def test_fp8_block_weights_carry_mxfp4_values_exactly(shape):
    *lead, n, k = shape
    w = mxfp4_like(int(torch.tensor(shape[:-1]).prod()), k, seed=n).view(*shape)
    q, s = fp8_block_quant(w)
    assert q.dtype == torch.float8_e4m3fn and q.shape == w.shape
    assert s.dtype == torch.float32 and s.shape == (*lead, -(-n // 128), k // 128)
    assert torch.equal(torch.log2(s), torch.round(torch.log2(s)))  # powers of two
    assert torch.equal(fp8_block_dequant(q, s), w.float())


def test_fp8_block_quant_rounds_other_values_closely():
    w = torch.randn(128, 256, generator=torch.Generator().manual_seed(1))
    q, s = fp8_block_quant(w)
    assert (q.float().abs().amax() <= 448) and ((fp8_block_dequant(q, s) - w).norm() / w.norm()) < 0.05


def test_bench_modules_import_no_sglang():
    """CPU collection imports every bench and baseline module: none may import SGLang at module level (it is
    only on the GPU host), and importing them sets SGLang's DeepGEMM pre-compile off for bench processes."""
    code = ("import os, sys\n"
            "import speedrun.eval.kernels.mla_decode_bench, speedrun.eval.kernels.mxfp4_gemm_bench\n"
            "import speedrun.eval.kernels.mxfp4_moe_bench, speedrun.eval.kernels.mxfp4_gemm_baselines\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('sglang', 'sgl_kernel', 'deep_gemm'))\n"
            "assert not bad, bad\n"
            "print(os.environ['SGLANG_JIT_DEEPGEMM_PRECOMPILE'])\n")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "SGLANG_JIT_DEEPGEMM_PRECOMPILE"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "0"
