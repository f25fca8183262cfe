"""CPU tests of the GEMM's large-M route (stock_fp8.py): one linear's weight converted to FP8 blocks under the
Triton interpreter (plain and swz128, bitwise eval's torch reference inside the 14-binade window), the plan's
routing (stock_fp8 above M 1024 on a CUDA sm90 with DeepGEMM; never on gfx950 or the interpreter; dequant_w with
the reason when deep_gemm is missing), the report line and the compile specs' names. Stock's GEMM itself runs on
the GPU (test_stock_fp8_gpu.py)."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import replace
from types import SimpleNamespace

import torch

if not torch.cuda.is_available():  # see test_mxfp4_gemm.py: the interpreter only where there is no GPU
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

from speedrun.eval.kernels.stock import fp8_block_dequant, fp8_block_quant
from speedrun.overlays import interpreter, report
from speedrun.overlays.mx.format import dequant_mxfp4
from speedrun.overlays.mxfp4_gemm import api, stock_fp8
from speedrun.overlays.mxfp4_gemm import sglang_hook as hook
from speedrun.overlays.mxfp4_gemm.config import Layout, Route
from speedrun.overlays.mxfp4_gemm.reference import random_mxfp4_weight

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="CPU interpreter tests")


@pytest.fixture(autouse=True, scope="module")
def _interp():
    interpreter.patch()


@pytest.mark.parametrize("layout", ["plain", "swz128"])
@pytest.mark.parametrize("n,k", [(256, 256), (192, 384)])  # a partial row tile; K = 3 tiles
def test_weight_conversion_is_exact_inside_the_window(layout, n, k):
    """Block scales 2**-8..2**6 (E8M0 119..133: 14 binades): bitwise eval's fp8_block_quant of the dequantized
    weight, which carries every value exactly; swz128 as the hook re-lays the weight out (api.relayout_weight)."""
    w, s = random_mxfp4_weight(n, k, seed=n + k, scale_lo=119, scale_hi=133)
    lw, ls, lay = (w, s, Layout.PLAIN) if layout == "plain" else api.relayout_weight(w, s)
    q, qs = stock_fp8.weight_fp8(lw, ls, lay, asm=False)
    truth = dequant_mxfp4(w, s)
    ref_q, ref_s = fp8_block_quant(truth)
    assert q.shape == (n, k) and qs.shape == (-(-n // 128), k // 128)
    assert torch.equal(qs, ref_s) and torch.equal(q.view(torch.uint8), ref_q.view(torch.uint8))
    assert torch.equal(fp8_block_dequant(q, qs), truth)
    assert q.untyped_storage().data_ptr() == stock_fp8.SCRATCH.bufs[torch.device("cpu")].data_ptr()


def test_plain_partial_k_tile():
    """K 160 (plain only: swz128 needs K % 128 == 0): the last tile's missing columns neither read nor written."""
    w, s = random_mxfp4_weight(130, 160, seed=3, scale_lo=120, scale_hi=126)
    q, qs = stock_fp8.weight_fp8(w, s, Layout.PLAIN, asm=False)
    ref_q, ref_s = fp8_block_quant(dequant_mxfp4(w, s))
    assert torch.equal(qs, ref_s) and torch.equal(q.view(torch.uint8), ref_q.view(torch.uint8))


def test_resident_weight_is_the_scratch_conversion_in_its_own_buffer():
    """Setting mxfp4_gemm_stock_fp8 resident: the weight converted once at load into a buffer of the layer's own
    (not the shared scratch), the same bytes as the per-call conversion."""
    w, s, lay = api.relayout_weight(*random_mxfp4_weight(256, 384, seed=9, scale_lo=120, scale_hi=126))
    q, qs = stock_fp8.resident(w, s, lay, asm=False)
    per_call = [t.clone() for t in stock_fp8.weight_fp8(w, s, lay, asm=False)]
    assert q.untyped_storage().data_ptr() != stock_fp8.SCRATCH.bufs[torch.device("cpu")].data_ptr()
    assert q.untyped_storage().nbytes() == stock_fp8.weight_bytes(256, 384)
    assert torch.equal(q.view(torch.uint8), per_call[0].view(torch.uint8)) and torch.equal(qs, per_call[1])


def _plan(n: int = 2112, k: int = 7168, arch: str = "sm90") -> api.GemmPlan:
    return api.make_plan(n, k, api.weight_layout(arch), device="cpu", arch=arch)


def test_sm90_takes_the_route_above_m_1024_and_reports_it():
    """As a CUDA sm90 with DeepGEMM gets it (stock_routes with no refusal): M <= 1024 ours, M > 1024 stock."""
    plan = api.stock_routes(_plan(), None)
    ms = (1, 64, 1024, 1025, 4096, 16384)
    assert [plan.launch(m).route == Route.STOCK_FP8 for m in ms] == [False] * 3 + [True] * 3
    assert plan.stock and plan.stock_above() == 1024 and plan.stock_why is None
    line = "M <= 1024: speedrun MXFP4 kernels; M > 1024: stock FP8 block GEMM (DeepGEMM; weight converted to FP8"
    assert plan.route_line().startswith(line) and "FP8 activations" in plan.route_line()
    hook.note_route(plan)
    hook.note_route(api.stock_routes(_plan(3072, 1536), None))  # another linear: the same line, recorded once
    assert report.snapshot()["mxfp4_gemm_routes"].count(plan.route_line()) == 1


def test_the_interpreter_and_gfx950_never_take_it():
    """The CPU interpreter (config arch sm90) runs the m>1024 bucket as dequant_w and says why; gfx950's table has
    no stock bucket, and a CUDA-only refusal stands on any ROCm arch."""
    plan = _plan()
    assert not plan.stock and plan.launch(4096).route == Route.DEQUANT_W
    assert "CUDA-only" in plan.stock_why and "CPU interpreter" in plan.route_line()
    gfx = _plan(arch="gfx950")
    assert not gfx.stock and all(run.quant.cfg.route != Route.STOCK_FP8 for run in gfx.launches.values())
    assert "CUDA-only, not gfx950" in api.stock_refusal("gfx950", cuda=True)
    assert api.stock_refusal("sm90", cuda=False).endswith("the CPU interpreter")


def test_hook_plan_records_the_fallback_line():
    """A layer planned by the hook (here on the CPU) records its routing in the per-process report."""
    w, s = random_mxfp4_weight(64, 256)
    layer = SimpleNamespace(weight=w, weight_scale=s)
    plan = hook.layer_plan(layer)
    assert plan.route_line() in report.snapshot()["mxfp4_gemm_routes"]
    assert "stock_fp8 buckets run dequant_w" in plan.route_line()


def test_setting_off_keeps_the_route_on_our_kernels(monkeypatch):
    """Setting mxfp4_gemm_stock_fp8 off (the environment variable, as a launch passes it): a CUDA sm90 refuses the
    route with that reason, so no weight reaches DeepGEMM (its warm-up of each shape costs ~60 s of server start);
    the recipe field takes the value too."""
    from speedrun.overlays import environ
    from speedrun.recipe import GemmOp

    monkeypatch.setenv("SPEEDRUN_MXFP4_GEMM_STOCK_FP8", "off")
    environ.reset()
    try:
        assert api.stock_refusal("sm90", cuda=True) == "setting mxfp4_gemm_stock_fp8 off"
        plan = api.stock_routes(_plan(), api.stock_refusal("sm90", cuda=True))
        assert plan.launch(4096).route == Route.DEQUANT_W and not plan.stock
        assert "setting mxfp4_gemm_stock_fp8 off" in plan.route_line()
    finally:
        monkeypatch.delenv("SPEEDRUN_MXFP4_GEMM_STOCK_FP8")
        environ.reset()
    assert GemmOp(enabled=True, stock_fp8="off").stock_fp8 == "off"
    with pytest.raises(ValueError, match="stock_fp8"):
        GemmOp(enabled=True, stock_fp8="maybe")


@pytest.mark.skipif(importlib.util.find_spec("deep_gemm") is not None, reason="deep_gemm is installed here")
def test_without_deep_gemm_the_plan_falls_back_to_dequant_w():
    """This machine has no deep_gemm: a CUDA sm90 here would be refused with that one-line reason."""
    why = stock_fp8.deepgemm_missing()
    assert why.startswith("deep_gemm does not import (") and "\n" not in why
    assert api.stock_refusal("sm90", cuda=True) == why
    plan = api.stock_routes(_plan(), why)
    assert plan.launch(4096).route == Route.DEQUANT_W and plan.stock_why == why and why in plan.route_line()
    assert api.stock_routes(plan, None).launch(4096).route == Route.STOCK_FP8  # the table's route is kept


def test_stock_buckets_must_come_last():
    plan = _plan()
    first = plan.launches["m<=16"]
    cfg = first.quant.cfg.replace(route="stock_fp8")
    bad = replace(plan, launches={**plan.launches, "m<=16": replace(first, quant=replace(first.quant, cfg=cfg))})
    with pytest.raises(ValueError, match="must come after every other one"):
        api.stock_routes(bad, None)


def test_w4a16_calls_on_a_stock_bucket_use_the_exact_weight():
    """quant_a=False keeps bf16 activations (no FP8): the dequantized weight through matmul, as dequant_w does."""
    w, s = random_mxfp4_weight(64, 256, seed=5)
    cfg = {"route": "stock_fp8", "BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 64}
    plan = api.stock_routes(api.make_plan(64, 256, device="cpu", config=cfg), None)
    a = torch.randn(3, 256, generator=torch.Generator().manual_seed(6)).bfloat16()
    assert plan.launch(3).route == Route.STOCK_FP8
    out = api.mxfp4_gemm(a, w, s, plan, quant_a=False)
    assert torch.equal(out, torch.matmul(a, dequant_mxfp4(w, s, torch.bfloat16).t()))


def test_compile_specs_keep_the_kernel_names():
    """The m>1024 bucket's GEMM kernel is its dequant_w fallback's: same spec name as before the route."""
    from speedrun.eval.kernels.mxfp4_gemm_compile import compile_specs

    names = [s.name for s in compile_specs("sm90")]
    assert "mxfp4_gemm/default[m<=max,dequant_w,A_MODE=0]" in names and not any("stock_fp8" in n for n in names)
