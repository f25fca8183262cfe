"""GPU tests of the GEMM's large-M route (stock_fp8.py) at DeepSeek-R1 TP8 prefill shapes: the sm90 conversion
(inline-PTX swz128 decode) carries the weight exactly, and the dispatched call (weight converted per call + stock
SGLang's DeepGEMM FP8 block linear) stays within the bound FP8 activations allow of the exact-weight product.
Needs sglang's GPU stack with deep_gemm (the .gpu-bundle); skipped with the reason where DeepGEMM is unavailable.
Run: python -m pytest -m gpu overlays/mxfp4_gemm/test_stock_fp8_gpu.py -x -q"""

from __future__ import annotations

import pytest
import torch

from speedrun.eval.kernels.stock import fp8_block_dequant
from speedrun.overlays.mx.format import dequant_mxfp4
from speedrun.overlays.mxfp4_gemm import api, stock_fp8
from speedrun.overlays.mxfp4_gemm.config import Route
from speedrun.overlays.mxfp4_gemm.reference import fp8_activation_bound, mxfp4_gemm_ref, random_mxfp4_weight

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")]

SHAPES = [(4096, 2112, 7168), (4096, 3072, 1536)]  # fused_qkv_a and TP8 q_b at prefill


def _case(m: int, n: int, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    w, s = random_mxfp4_weight(n, k, seed=n, device="cuda")
    a = torch.randn(m, k, generator=torch.Generator(device="cuda").manual_seed(k), device="cuda").bfloat16()
    return a, w, s


@pytest.fixture(scope="module", autouse=True)
def _deepgemm():
    if torch.version.hip is not None:
        pytest.skip("the route is CUDA-only")
    from speedrun.eval.kernels.mxfp4_gemm_baselines import deepgemm_setup

    try:
        deepgemm_setup()  # SGLang's default config published (no server here); DeepGEMM compiles only these Ms
    except (ImportError, RuntimeError) as exc:
        pytest.skip(f"stock's DeepGEMM path is unavailable: {exc}")


@pytest.mark.parametrize("m,n,k", SHAPES)
def test_sm90_conversion_carries_the_weight_exactly(m, n, k):
    """E8M0 118..124 lies well inside the 14-binade window: every value exact, through the PTX swz128 decode."""
    _, w, s = _case(m, n, k)
    w2, s2, layout = api.relayout_weight(w, s)
    q, qs = stock_fp8.weight_fp8(w2, s2, layout, asm=True)
    assert torch.equal(fp8_block_dequant(q, qs), dequant_mxfp4(w, s))


@pytest.mark.parametrize("m,n,k", SHAPES)
def test_dispatched_call_is_within_the_fp8_activation_bound(m, n, k):
    """The plan (swz128 weights, as the hook leaves them) sends M 4096 to stock; the result stays inside
    `fp8_activation_bound` of the exact-weight product and is closer to it than our w4a4 routes (MXFP4 A)."""
    a, w, s = _case(m, n, k)
    w2, s2, layout = api.relayout_weight(w, s)
    plan = api.make_plan(n, k, layout, device="cuda")
    assert plan.launch(m).route == Route.STOCK_FP8, plan.stock_why
    out = api.mxfp4_gemm(a, w2, s2, plan)
    wf = dequant_mxfp4(w, s, torch.float32)
    ref = a.float() @ wf.t()
    err = (out.float() - ref).abs()
    bound = fp8_activation_bound(a, wf)
    assert out.dtype == torch.bfloat16 and out.shape == (m, n) and torch.isfinite(out.float()).all()
    assert (err <= bound).all(), f"max excess {(err - bound).max().item():.4g}"
    rel = (err.norm() / ref.norm()).item()
    w4a4 = ((mxfp4_gemm_ref(a, w, s).float() - ref).norm() / ref.norm()).item()
    assert rel < w4a4, f"FP8 activations {rel:.4f} vs MXFP4 activations {w4a4:.4f}"
    slot = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")  # the hook's output slot form
    assert api.mxfp4_gemm(a, w2, s2, plan, out=slot) is slot and torch.equal(slot, out)


def test_resident_weight_serves_the_route_bit_for_bit():
    """Setting mxfp4_gemm_stock_fp8 resident (the hook's load-time path): the layer keeps its own FP8 weight, the
    hook's call passes it to the route, and the output is the per-call conversion's, bit for bit, at M 4096."""
    from types import SimpleNamespace

    from speedrun.overlays import environ
    from speedrun.overlays.mxfp4_gemm import sglang_hook as hook

    m, n, k = SHAPES[0]
    a, w, s = _case(m, n, k)
    w2, s2, layout = api.relayout_weight(w, s)
    plan = api.make_plan(n, k, layout, device="cuda")
    per_call = api.mxfp4_gemm(a, w2, s2, plan)
    layer = SimpleNamespace(weight=w2, weight_scale=s2, speedrun_w_layout=layout)
    environ.load({"SPEEDRUN_MXFP4_GEMM_STOCK_FP8": "resident"})
    try:
        assert hook.layer_plan(layer).stock
    finally:
        environ.reset()
    q, _ = layer._speedrun_fp8
    assert q.untyped_storage().data_ptr() != stock_fp8.weight_fp8(w2, s2, layout, asm=True)[0].data_ptr()
    assert torch.equal(api.mxfp4_gemm(a, w2, s2, plan, fp8=layer._speedrun_fp8), per_call)
